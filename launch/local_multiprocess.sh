#!/usr/bin/env bash
# Several JAX processes on this machine, joined by a coordinator on 127.0.0.1 — the multi-host
# code path (per-process data shards, global batches, coordinated checkpoints) without a cluster.
#
# Usage:
#   launch/local_multiprocess.sh NUM_PROCESSES --config configs/demo.py [--workdir DIR] [...]
#
# Every process gets the training arguments plus
#   --coordinator_address=127.0.0.1:PORT --num_processes=NUM_PROCESSES --process_id=i
# The script waits for all of them; if one fails, it stops the others and exits with that
# process's status. Ctrl-C stops all of them.
#
# Assumes: bash 5.1 or newer; radi_jax installed in the Python environment that `python` (or
# $PYTHON) runs. CPU processes talk through gloo collectives (JAX_CPU_COLLECTIVES_IMPLEMENTATION).
# Environment:
#   PYTHON                 interpreter to use (default: python)
#   RADI_TRAIN_MODULE      module to run (default: radi_jax.train)
#   RADI_FAKE_DEVICES=k    give each process k CPU devices
#                          (XLA_FLAGS=--xla_force_host_platform_device_count=k), for testing
#   RADI_COORDINATOR_PORT  coordinator port (default: a free port chosen now)
set -euo pipefail

if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "$0: needs bash 5.1 or newer (wait -n -p), this is bash $BASH_VERSION" >&2
  exit 2
fi
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [train args...]  (NUM_PROCESSES: a positive integer, got '${1:-}')" >&2
  exit 2
fi
num_processes=$1
shift

python_bin=${PYTHON:-python}
module=${RADI_TRAIN_MODULE:-radi_jax.train}

if [[ -n "${RADI_FAKE_DEVICES:-}" ]]; then
  if [[ ! "$RADI_FAKE_DEVICES" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: RADI_FAKE_DEVICES must be a positive integer, got '$RADI_FAKE_DEVICES'" >&2
    exit 2
  fi
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$RADI_FAKE_DEVICES"
fi

# Older JAX releases have no default CPU collectives; multi-process CPU runs need them.
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=${JAX_CPU_COLLECTIVES_IMPLEMENTATION:-gloo}

port=${RADI_COORDINATOR_PORT:-$("$python_bin" -c '
import socket
with socket.socket() as s:
  s.bind(("127.0.0.1", 0))
  print(s.getsockname()[1])')}

declare -A running=()
stop_all() {
  for pid in "${!running[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < num_processes; i++)); do
  "$python_bin" -m "$module" "$@" \
    --coordinator_address="127.0.0.1:$port" \
    --num_processes="$num_processes" \
    --process_id="$i" &
  running[$!]=$i
done

while ((${#running[@]} > 0)); do
  status=0
  finished=
  wait -n -p finished "${!running[@]}" || status=$?
  process_id=${running[$finished]}
  unset "running[$finished]"
  if ((status != 0)); then
    echo "$0: process $process_id exited with status $status; stopping the others" >&2
    stop_all
    exit "$status"
  fi
done
