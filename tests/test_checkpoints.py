"""Tests for radi_jax.training.checkpoints: retention, exact round trips, resume, closing."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from radi_jax.training.checkpoints import CheckpointError, StageCheckpointer


def _state(step: int) -> dict:
  """A small trainer-like state whose values identify the step."""
  rng = np.random.default_rng(step)
  return {
      "params": {"adapter": {"down": rng.normal(size=(3, 2)).astype(np.float32),
                             "bias": rng.normal(size=(2,)).astype(np.float32)}},
      "opt_state": [rng.normal(size=(4,)).astype(np.float32), np.int32(step)],
      "step": np.int32(step),
      "rng": np.array([step, 7], np.uint32),
  }


def _assert_same_tree(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.asarray(got).dtype == np.asarray(want).dtype


def _expected_survivors(saves, keep_latest, keep_best, mode):
  """The retention rule written out plainly: latest N steps plus best M steps with the metric."""
  steps = [step for step, _ in saves]
  latest = set(sorted(steps)[-keep_latest:])
  scored = [(value, step) for step, value in saves if value is not None]
  scored.sort(reverse=(mode == "max"))
  best = {step for _, step in scored[:keep_best]}
  return sorted(latest | best)


# Steps 1-8; None = a mid-epoch save without validation metrics.
_SAVES = [(1, None), (2, 0.50), (3, None), (4, 0.90), (5, 0.30), (6, None), (7, 0.40), (8, None)]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_keeps_latest_and_best_and_deletes_the_rest(tmp_path, mode):
  directory = str(tmp_path / "checkpoints")
  with StageCheckpointer(directory, keep_latest=2, best_metric="val/acc1", best_mode=mode,
                         keep_best=1) as checkpointer:
    for step, acc1 in _SAVES:
      metrics = None if acc1 is None else {"val/acc1": acc1, "train/loss": 1.0 / step}
      assert checkpointer.save(step, _state(step), metrics=metrics)
    checkpointer.wait_until_finished()
    expected = _expected_survivors(_SAVES, 2, 1, mode)
    assert checkpointer.all_steps() == expected
    assert checkpointer.latest_step() == 8
    assert checkpointer.best_step() == (4 if mode == "max" else 5)
  on_disk = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  assert on_disk == expected == ([4, 7, 8] if mode == "max" else [5, 7, 8])


def test_restore_round_trips_state_data_state_and_metadata_after_reopening(tmp_path):
  directory = str(tmp_path / "student")
  data_states = {3: b"\x00\xffgrain-iterator-3", 5: '{"next_index": 160}',
                 6: {"epoch": 2, "index": 7}}
  with StageCheckpointer(directory, keep_latest=3) as checkpointer:
    for step in (3, 5, 6):
      checkpointer.save(step, _state(step), data_state=data_states[step],
                        metadata={"epoch": step // 3, "stage": "student"},
                        metrics={"val/acc1": step / 10})
  # A new manager on the same directory: what a re-run of the command sees.
  with StageCheckpointer(directory, keep_latest=3) as checkpointer:
    assert checkpointer.latest_step() == 6
    assert checkpointer.best_step() == 6
    template = _state(0)
    state, data_state, metadata = checkpointer.restore(state_template=template)
    _assert_same_tree(state, _state(6))
    assert data_state == data_states[6]
    assert metadata == {"epoch": 2, "stage": "student"}
    for step in (3, 5):
      state, data_state, metadata = checkpointer.restore(step, state_template=template)
      _assert_same_tree(state, _state(step))
      assert data_state == data_states[step] and type(data_state) is type(data_states[step])
      assert metadata["epoch"] == step // 3


def test_restore_onto_abstract_sharded_template(tmp_path):
  directory = str(tmp_path / "teacher")
  saved = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "step": jnp.int32(9)}
  with StageCheckpointer(directory) as checkpointer:
    checkpointer.save(9, saved, data_state=None)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          saved)
  with StageCheckpointer(directory) as checkpointer:
    state, data_state, metadata = checkpointer.restore(state_template=template)
  assert isinstance(state["w"], jax.Array) and state["w"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(state["w"]),
                                np.arange(12, dtype=np.float32).reshape(3, 4))
  assert int(state["step"]) == 9 and data_state is None and metadata == {}


def test_unawaited_save_is_on_disk_after_leaving_the_block(tmp_path):
  directory = str(tmp_path / "checkpoints")
  big = {"w": np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)}
  with StageCheckpointer(directory) as checkpointer:
    checkpointer.save(1, big, metadata={"epoch": 0})
    # No wait: leaving the block must finish the asynchronous save.
  assert os.path.isdir(os.path.join(directory, "1"))
  with StageCheckpointer(directory) as checkpointer:
    assert checkpointer.all_steps() == [1]
    state, _, _ = checkpointer.restore(state_template={"w": np.zeros((512, 512), np.float32)})
  np.testing.assert_array_equal(state["w"], big["w"])


def test_saves_without_the_best_metric_never_count_as_best(tmp_path):
  with StageCheckpointer(str(tmp_path / "c"), keep_latest=1, keep_best=1) as checkpointer:
    checkpointer.save(1, _state(1), metrics={"train/loss": 0.1})   # no val/acc1
    checkpointer.save(2, _state(2))
    checkpointer.wait_until_finished()
    assert checkpointer.best_step() is None
    assert checkpointer.all_steps() == [2]
    checkpointer.save(3, _state(3), metrics={"val/acc1": 0.2})
    checkpointer.save(4, _state(4), metrics={"val/acc1": float("nan")})
    checkpointer.save(5, _state(5))
    checkpointer.wait_until_finished()
    assert checkpointer.best_step() == 3
    assert checkpointer.all_steps() == [3, 5]


def test_existing_step_is_skipped_unless_forced(tmp_path):
  with StageCheckpointer(str(tmp_path / "c")) as checkpointer:
    assert checkpointer.save(4, _state(4))
    assert not checkpointer.save(4, _state(40))
    checkpointer.wait_until_finished()
    _assert_same_tree(checkpointer.restore(4, state_template=_state(0))[0], _state(4))
    # The epoch-end save at the same step carries the validation metrics.
    assert checkpointer.save(4, _state(40), metrics={"val/acc1": 0.5}, force=True)
    checkpointer.wait_until_finished()
    _assert_same_tree(checkpointer.restore(4, state_template=_state(0))[0], _state(40))
    assert checkpointer.best_step() == 4


def test_unusable_directories_give_one_line_errors_naming_them(tmp_path):
  empty = str(tmp_path / "empty")
  with StageCheckpointer(empty) as checkpointer:
    assert checkpointer.latest_step() is None and checkpointer.best_step() is None
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
      checkpointer.restore(state_template=_state(0))
    checkpointer.save(1, _state(1))
    with pytest.raises(CheckpointError, match="has no step 2"):
      checkpointer.restore(2, state_template=_state(0))

  foreign = tmp_path / "foreign"
  (foreign / "7" / "model").mkdir(parents=True)
  (foreign / "7" / "model" / "weights.bin").write_bytes(b"not an orbax checkpoint")
  with StageCheckpointer(str(foreign)) as checkpointer:
    with pytest.raises(CheckpointError) as error:
      checkpointer.restore(state_template=_state(0))
  assert str(foreign) in str(error.value) and "\n" not in str(error.value)

  # Same directory, different kind of state (e.g. a teacher checkpoint read as a student's).
  with StageCheckpointer(empty) as checkpointer:
    with pytest.raises(CheckpointError) as error:
      checkpointer.restore(state_template={"other": np.zeros(5, np.float32)})
  assert empty in str(error.value) and "\n" not in str(error.value)

  # A checkpoint whose files were damaged after writing.
  damaged = tmp_path / "damaged"
  with StageCheckpointer(str(damaged)) as checkpointer:
    checkpointer.save(1, _state(1), metrics={"val/acc1": 0.3})
  (damaged / "1" / "metrics" / "metrics").write_text("{truncated")
  with pytest.raises(CheckpointError, match="could not be read as Orbax checkpoints") as error:
    StageCheckpointer(str(damaged))
  assert str(damaged) in str(error.value) and "\n" not in str(error.value)

  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(CheckpointError, match="is a file"):
    StageCheckpointer(str(a_file))


def test_optax_state_and_typed_rng_key_round_trip(tmp_path):
  params = {"adapter": jnp.full((2, 3), 0.5), "norm": {"scale": jnp.ones(4)}}
  optimizer = optax.chain(optax.clip_by_global_norm(0.1),
                          optax.adamw(optax.linear_schedule(0.0, 1e-3, 10)))
  opt_state = optimizer.init(params)
  _, opt_state = optimizer.update(jax.tree.map(lambda x: x + 0.25, params), opt_state, params)
  state = {"params": params, "opt_state": opt_state, "rng": jax.random.key(3), "step": jnp.int32(1)}
  with StageCheckpointer(str(tmp_path / "c")) as checkpointer:
    checkpointer.save(1, state)
  template = {"params": params, "opt_state": optimizer.init(params), "rng": jax.random.key(0),
              "step": jnp.int32(0)}
  with StageCheckpointer(str(tmp_path / "c")) as checkpointer:
    restored, _, _ = checkpointer.restore(state_template=template)
  assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
  def unkey(tree):
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)
  _assert_same_tree(unkey(restored), unkey(state))


# Two processes save a batch-sharded array together, re-open the directory and restore it onto the
# same sharding; each checks its own shard against the full array it knows independently.
_TWO_PROCESS_CHECKPOINTS = textwrap.dedent("""
    import argparse, json, os
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from radi_jax.training.checkpoints import StageCheckpointer

    parser = argparse.ArgumentParser()
    for name in ("--out", "--coordinator_address"):
      parser.add_argument(name)
    for name in ("--num_processes", "--process_id"):
      parser.add_argument(name, type=int)
    flags = parser.parse_args()
    jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                               num_processes=flags.num_processes, process_id=flags.process_id)
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    full = {step: np.arange(24, dtype=np.float32).reshape(8, 3) * step for step in (1, 2, 3)}
    def state(step):
      return {"w": jax.make_array_from_callback((8, 3), sharding, lambda index: full[step][index]),
              "step": np.int32(step)}
    directory = os.path.join(flags.out, "checkpoints")
    with StageCheckpointer(directory, keep_latest=1) as checkpointer:
      checkpointer.save(1, state(1), data_state=b"it1", metrics={"val/acc1": 0.5})
      checkpointer.save(2, state(2), data_state=b"it2")
      checkpointer.save(3, state(3), data_state=b"it3", metrics={"val/acc1": 0.2})
    template = {"w": jax.ShapeDtypeStruct((8, 3), np.float32, sharding=sharding),
                "step": np.int32(0)}
    with StageCheckpointer(directory, keep_latest=1) as checkpointer:
      steps, best = checkpointer.all_steps(), checkpointer.best_step()
      restored, data_state, _ = checkpointer.restore(best, state_template=template)
    shards_match = all(np.array_equal(np.asarray(shard.data), full[1][shard.index])
                       for shard in restored["w"].addressable_shards)
    with open(os.path.join(flags.out, f"process_{flags.process_id}.json"), "w") as file:
      json.dump({"steps": steps, "best": best, "data_state": data_state.decode(),
                 "step": int(restored["step"]), "shards_match": shards_match,
                 "local_shards": len(restored["w"].addressable_shards)}, file)
""")


def test_two_processes_save_and_restore_one_sharded_checkpoint(tmp_path):
  (tmp_path / "two_process_checkpoints.py").write_text(_TWO_PROCESS_CHECKPOINTS)
  repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  environment = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu",
                     PYTHONPATH=os.pathsep.join([str(tmp_path), repository]),
                     RADI_TRAIN_MODULE="two_process_checkpoints", RADI_FAKE_DEVICES="2")
  environment.pop("XLA_FLAGS", None)
  result = subprocess.run(["bash", os.path.join(repository, "launch", "local_multiprocess.sh"), "2",
                           "--out", str(tmp_path)], env=environment, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for process in range(2):
    report = json.loads((tmp_path / f"process_{process}.json").read_text())
    assert report == {"steps": [1, 3], "best": 1, "data_state": "it1", "step": 1,
                      "shards_match": True, "local_shards": 2}
