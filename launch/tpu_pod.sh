#!/usr/bin/env bash
# Training on a Cloud TPU pod slice: the same command on every host (worker), started over ssh.
#
# Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/<name>.py --workdir /mnt/shared/runs/<name>
#
# jax.distributed.initialize() (called by --distributed) finds the other hosts from the TPU
# metadata, so no coordinator address is needed.
#
# Assumes: gcloud is installed and authenticated here; every worker has radi_jax installed at the
# same path, with converted weights and data at the paths the config names; --workdir is a
# directory every worker sees (e.g. a Filestore/NFS mount): all hosts write checkpoint shards there.
# Environment:
#   RADI_REMOTE_DIR    directory to cd into on each worker, absolute or relative to the home
#                      directory (default: the home directory)
#   PYTHON             interpreter on the workers (default: python3)
#   RADI_TRAIN_MODULE  module to run (default: radi_jax.train)
#   GCLOUD_PROJECT     passed as --project when set
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [train args...]" >&2
  exit 2
fi
tpu_name=$1
zone=$2
shift 2

# Quote every argument so that it reaches the remote shell unchanged.
remote_args=$(printf ' %q' "$@")
remote_python=$(printf '%q' "${PYTHON:-python3}")
remote_module=$(printf '%q' "${RADI_TRAIN_MODULE:-radi_jax.train}")
remote_dir=$(printf '%q' "${RADI_REMOTE_DIR:-.}")
remote_command="cd $remote_dir && $remote_python -m $remote_module --distributed$remote_args"

project_flag=()
if [[ -n "${GCLOUD_PROJECT:-}" ]]; then
  project_flag=(--project="$GCLOUD_PROJECT")
fi

exec gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" "${project_flag[@]}" \
  --worker=all --command="$remote_command"
