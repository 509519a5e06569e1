"""Shared test setup: the repository root on sys.path (configs/ is imported by path-free name)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import shutil
import tempfile

# One persistent XLA compilation cache for the whole session, inherited by the subprocesses the
# end-to-end tests start: the same tiny model is compiled once instead of once per process.
_CACHE_DIR = tempfile.mkdtemp(prefix='radi_jax_xla_cache_')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE_DIR)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  shutil.rmtree(_CACHE_DIR, ignore_errors=True)
