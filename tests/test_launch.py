"""Tests for launch/local_multiprocess.sh with a stand-in training module (RADI_TRAIN_MODULE)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

_LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
_SCRIPT = os.path.join(_LAUNCH, "local_multiprocess.sh")

# Joins the processes exactly as the training entry point does, then proves they talk to each other
# with one cross-process all-gather.
_STAND_IN = textwrap.dedent("""
    import argparse, json, os
    import jax
    from jax.experimental import multihost_utils
    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--note")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    flags = parser.parse_args()
    jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                               num_processes=flags.num_processes, process_id=flags.process_id)
    gathered = multihost_utils.process_allgather(np.array([10 + jax.process_index()]))
    with open(os.path.join(flags.out, f"process_{flags.process_id}.json"), "w") as file:
      json.dump({"process_count": jax.process_count(), "process_index": jax.process_index(),
                 "device_count": jax.device_count(),
                 "local_device_count": jax.local_device_count(),
                 "gathered": np.asarray(gathered).ravel().tolist(), "note": flags.note}, file)
    jax.distributed.shutdown()
""")

# Process 1 fails at once; process 0 would run for two minutes unless the launcher stops it.
_FAILING = textwrap.dedent("""
    import argparse, os, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    flags = parser.parse_args()
    if flags.process_id == 1:
      while not os.path.exists(os.path.join(flags.out, "survivor.pid")):
        time.sleep(0.05)
      sys.exit(3)
    with open(os.path.join(flags.out, "survivor.pid"), "w") as file:
      file.write(str(os.getpid()))
    time.sleep(120)
""")


def _run(tmp_path, module: str, source: str, *args: str, **env: str):
  (tmp_path / f"{module}.py").write_text(source)
  environment = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path),
                     RADI_TRAIN_MODULE=module, JAX_PLATFORMS="cpu", **env)
  environment.pop("XLA_FLAGS", None)
  return subprocess.run(["bash", _SCRIPT, *args], env=environment, capture_output=True, text=True,
                        timeout=120, check=False)


def test_two_processes_join_one_distributed_run(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  result = _run(tmp_path, "stand_in_train", _STAND_IN, "2", "--out", str(out), "--note", "a b",
                RADI_FAKE_DEVICES="2")
  assert result.returncode == 0, result.stderr[-2000:]
  reports = [json.loads((out / f"process_{i}.json").read_text()) for i in range(2)]
  for index, report in enumerate(reports):
    assert report == {"process_count": 2, "process_index": index, "device_count": 4,
                      "local_device_count": 2, "gathered": [10, 11], "note": "a b"}


def test_one_failing_process_stops_the_others_and_sets_the_status(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  start = time.monotonic()
  result = _run(tmp_path, "failing_train", _FAILING, "2", "--out", str(out))
  elapsed = time.monotonic() - start
  assert result.returncode == 3
  assert "process 1 exited with status 3" in result.stderr
  assert elapsed < 30
  survivor = int((out / "survivor.pid").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(survivor, 0)


def test_bad_process_count_is_one_clear_line(tmp_path):
  result = subprocess.run(["bash", _SCRIPT, "two"], capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"usage: {_SCRIPT} NUM_PROCESSES [train args...]  "
      "(NUM_PROCESSES: a positive integer, got 'two')"]


def _fake_command(tmp_path, name: str) -> dict:
  """Puts an executable ``name`` on PATH that writes its arguments, one per line, to name.args."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  command = bin_dir / name
  command.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path / (name + ".args")}\n')
  command.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def test_local_slurm_and_tpu_launchers_pass_arguments_unchanged(tmp_path):
  train_args = ["--config", "configs/demo.py", "--config.student.note=a b", "--workdir", "/runs/x"]

  (tmp_path / "echo_train.py").write_text(
      "import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  local = subprocess.run(["bash", os.path.join(_LAUNCH, "local.sh"), *train_args],
                         env=dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path),
                                  RADI_TRAIN_MODULE="echo_train"),
                         capture_output=True, text=True, check=True)
  assert json.loads(local.stdout) == train_args

  subprocess.run(["bash", os.path.join(_LAUNCH, "slurm.sbatch"), *train_args],
                 env=_fake_command(tmp_path, "srun"), check=True)
  assert (tmp_path / "srun.args").read_text().splitlines() == [
      "--kill-on-bad-exit=1", "python", "-m", "radi_jax.train", "--distributed", *train_args]

  subprocess.run(["bash", os.path.join(_LAUNCH, "tpu_pod.sh"), "my-pod", "us-central2-b",
                  *train_args], env=_fake_command(tmp_path, "gcloud"), check=True)
  gcloud_args = (tmp_path / "gcloud.args").read_text().splitlines()
  assert gcloud_args[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
                             "--worker=all"]
  remote = gcloud_args[7]
  assert remote.startswith("--command=cd . && python3 -m radi_jax.train --distributed ")
  # The remote shell must see the same arguments: let bash split the command as ssh's would.
  remote_words = subprocess.run(
      ["bash", "-c", 'eval "set -- ${0#*--distributed }"; printf "%s\\n" "$@"',
       remote[len("--command="):]], capture_output=True, text=True, check=True)
  assert remote_words.stdout.splitlines() == train_args
