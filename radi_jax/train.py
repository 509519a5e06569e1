"""Entry point: ``python -m radi_jax.train --config configs/<name>.py [--config.a.b=v] [--workdir DIR]``.

This module only parses flags, starts the distributed runtime when asked, and calls
`radi_jax.training.trainer.train_and_evaluate`. User errors (a missing file, a bad key, a stale cache,
a diverged loss) are printed as one line, without a traceback, and exit with status 1.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/run', 'Directory for data, checkpoints, reports.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() with no arguments (TPU pods and SLURM clusters detect the rest).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for an explicit multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (explicit runs).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (explicit runs).')


def configure_logging() -> None:
  """radi_jax's own messages at INFO; libraries (Orbax, TFDS) only warnings; no TFDS progress bars."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger('radi_jax').setLevel(std_logging.INFO)
  tfds.display_progress_bar(False)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()

  from radi_jax import user_errors  # pylint: disable=g-import-not-at-top
  from radi_jax.training import trainer  # pylint: disable=g-import-not-at-top

  configure_logging()
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    # Re-runs and resumed runs of a workdir reuse compiled steps instead of compiling again.
    jax.config.update('jax_compilation_cache_dir', os.path.join(_WORKDIR.value, 'jax_cache'))
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except user_errors.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
