"""The one exception the data package raises for bad user input."""


class DataError(Exception):
  """Bad input data, described in one line naming the file, row or key and what was expected.

  Entry points print ``str(error)`` without a traceback, so the message must stand on its own.
  """

  def __init__(self, message: str):
    # A newline would break the one-line contract the entry points rely on.
    super().__init__(" ".join(str(message).split()))
