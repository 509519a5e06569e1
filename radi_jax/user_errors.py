"""The exception classes whose one-line messages entry points print instead of a traceback."""

from radi_jax.data import DataError
from radi_jax.model.config import ModelError
from radi_jax.training.checkpoints import CheckpointError
from radi_jax.training.errors import UserError
from radi_jax.training.reporting import HistoryError

USER_ERRORS = (UserError, DataError, ModelError, CheckpointError, HistoryError)
