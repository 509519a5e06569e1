#!/usr/bin/env bash
# One training process on this machine, using every local device (CPU, one or more GPUs).
#
# Usage:
#   launch/local.sh --config configs/demo.py [--workdir DIR] [--config.key=value ...]
#
# Assumes: radi_jax is installed in the Python environment that `python` (or $PYTHON) runs.
# Environment:
#   PYTHON             interpreter to use (default: python)
#   RADI_TRAIN_MODULE  module to run (default: radi_jax.train)
set -euo pipefail

exec "${PYTHON:-python}" -m "${RADI_TRAIN_MODULE:-radi_jax.train}" "$@"
