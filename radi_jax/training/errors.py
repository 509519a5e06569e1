"""User-facing errors of training runs: each message is one line naming the key, file or step."""


class UserError(Exception):
  """An error the user can fix; entry points print its one-line message without a traceback."""


class ConfigError(UserError):
  """A config key has a bad value or points at a missing file or directory."""


class StaleCacheError(UserError):
  """The teacher cache was written for another teacher, config or dataset."""


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""
