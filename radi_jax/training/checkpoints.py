"""Orbax checkpoints for one training stage: save, keep the latest and the best, resume.

One `StageCheckpointer` owns one stage directory (``<workdir>/<stage>/checkpoints``). Each step
directory holds three items:

- ``state``: the pytree the trainer passes (trainable parameters, optimizer state, step, rng); the
  frozen backbone is never part of it.
- ``data_state``: the data iterator's state (grain's iterator state is JSON-serialisable bytes or
  a string), so a resumed run continues with the next unseen batch.
- ``metadata``: a small JSON dict (epoch, stage information).

Retention combines two Orbax preservation policies: the latest ``keep_latest`` steps and the best
``keep_best`` steps by ``best_metric`` both survive. (Orbax's ``best_fn`` with ``max_to_keep`` alone
keeps only the best and deletes the latest, which breaks resuming.) Checkpoints saved without that
metric (mid-epoch saves) take part in "latest" only.

Saves are asynchronous; leaving the ``with`` block waits for them and closes the manager, so a save
is never lost by forgetting to wait. Every process calls `save` and `restore`; Orbax coordinates the
writes across processes.
"""

from __future__ import annotations

import base64
import math
import os
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

PyTree = Any
DataState = bytes | str | dict | None

_STATE = "state"
_DATA_STATE = "data_state"
_METADATA = "metadata"
_ITEM_NAMES = (_STATE, _DATA_STATE, _METADATA)


class CheckpointError(Exception):
  """A checkpoint directory that cannot be used; the message is one line naming it."""


def _encode_data_state(data_state: DataState) -> dict:
  """Wraps the iterator state in JSON, remembering its Python type for `_decode_data_state`."""
  if data_state is None:
    return {"kind": "none"}
  if isinstance(data_state, bytes):
    return {"kind": "bytes", "value": base64.b64encode(data_state).decode("ascii")}
  if isinstance(data_state, str):
    return {"kind": "str", "value": data_state}
  if isinstance(data_state, dict):
    return {"kind": "dict", "value": data_state}
  raise TypeError(f"data_state must be bytes, str, dict or None, got {type(data_state).__name__}")


def _decode_data_state(encoded: dict) -> DataState:
  kind = encoded["kind"]
  if kind == "none":
    return None
  if kind == "bytes":
    return base64.b64decode(encoded["value"])
  if kind in ("str", "dict"):
    return encoded["value"]
  raise ValueError(f"unknown data_state kind {kind!r}")


class StageCheckpointer:
  """Checkpoints of one stage, kept by recency and by a validation metric.

  Use it as a context manager::

    with StageCheckpointer(workdir + '/teacher/checkpoints') as checkpointer:
      if checkpointer.latest_step() is not None:
        state, data_state, metadata = checkpointer.restore(state_template=state)
      ...
      checkpointer.save(step, state, data_state=iterator.get_state(),
                        metadata={'epoch': epoch}, metrics={'val/acc1': acc1})

  Args:
    directory: the stage's checkpoint directory; created if missing.
    keep_latest: how many of the most recent steps to keep.
    best_metric: key of the ``metrics`` dict passed to `save` that ranks checkpoints, or None to
      keep by recency only.
    best_mode: ``'max'`` if a larger ``best_metric`` is better, ``'min'`` otherwise.
    keep_best: how many of the best steps to keep besides the latest ones.
  """

  def __init__(self,
               directory: str,
               *,
               keep_latest: int = 2,
               best_metric: str | None = "val/acc1",
               best_mode: Literal["max", "min"] = "max",
               keep_best: int = 1):
    if keep_latest < 1:
      raise ValueError(f"keep_latest must be at least 1 (the resume point), got {keep_latest}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    directory = os.fspath(directory)
    # Remote paths (gs://...) go to Orbax unchanged; only local ones are made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.best_metric = best_metric
    self._best_mode = best_mode
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(
          f"checkpoint directory {self.directory} is a file, expected a directory")

    policies = [checkpoint_managers.LatestN(n=keep_latest)]
    best_fn = None
    if best_metric is not None:
      best_fn = self._metric_value
      # BestN sorts ascending and keeps the tail, so 'max' needs no reversal.
      policies.append(
          checkpoint_managers.BestN(get_metric_fn=best_fn,
                                    reverse=best_mode == "min",
                                    n=keep_best,
                                    keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        create=True,
        enable_async_checkpointing=True,
    )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=_ITEM_NAMES)
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint directory {self.directory} could not be read as Orbax checkpoints "
          f"({type(error).__name__}: {_first_line(error)})") from error
    self._closed = False

  def _metric_value(self, metrics: dict) -> float:
    value = metrics.get(self.best_metric) if isinstance(metrics, dict) else None
    if value is None or not math.isfinite(float(value)):
      # A step without the metric must never win; this only matters for directories written by
      # hand or by an older run, because `save` keeps such metrics out of Orbax.
      return -math.inf if self._best_mode == "max" else math.inf
    return float(value)

  def __enter__(self) -> "StageCheckpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager. Safe to call twice."""
    if not self._closed:
      self._closed = True
      self._manager.wait_until_finished()
      self._manager.close()

  def wait_until_finished(self) -> None:
    """Blocks until every asynchronous save has been committed to disk."""
    self._manager.wait_until_finished()

  def all_steps(self) -> list[int]:
    """Steps present on disk, ascending."""
    return sorted(int(step) for step in self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The most recent step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best ``best_metric`` (the later one on ties); None when none has it."""
    if self.best_metric is None:
      return None
    self._manager.wait_until_finished()
    return self._manager.best_step()

  def save(self,
           step: int,
           state: PyTree,
           *,
           data_state: DataState = None,
           metadata: dict | None = None,
           metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an asynchronous save of one step (all processes must call it).

    Args:
      step: the global training step; the directory name.
      state: pytree of jax or numpy arrays (and scalars).
      data_state: the data iterator's state, restored as the same type.
      metadata: JSON-serialisable dict, e.g. ``{'epoch': 3, 'stage': 'student'}``.
      metrics: scalar metrics of this step; the step competes for "best" only when they contain
        ``best_metric`` with a finite value.
      force: replace a checkpoint already on disk at ``step`` (e.g. an epoch-end save with
        metrics after a periodic save at the same step). Without it such a save is skipped.

    Returns:
      True when a save was started, False when ``step`` already exists and ``force`` is False.
    """
    self._manager.wait_until_finished()
    if step in self._manager.all_steps():
      if not force:
        return False
      self._manager.delete(step)
    tracked = None
    best_value = None if metrics is None or self.best_metric is None else metrics.get(
        self.best_metric)
    if best_value is not None and math.isfinite(float(best_value)):
      tracked = {key: float(value) for key, value in metrics.items()}
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _DATA_STATE: ocp.args.JsonSave(_encode_data_state(data_state)),
        _METADATA: ocp.args.JsonSave(dict(metadata or {})),
    })
    return bool(self._manager.save(step, args=args, metrics=tracked, force=True))

  def restore(self,
              step: int | None = None,
              *,
              state_template: PyTree) -> tuple[PyTree, DataState, dict]:
    """Reads one step back.

    Args:
      step: the step to read; None reads the latest.
      state_template: pytree with the structure of the saved state whose leaves are arrays or
        `jax.ShapeDtypeStruct` (with shardings, to restore straight onto a mesh).

    Returns:
      ``(state, data_state, metadata)``: state shaped like the template, the iterator state as
      the type it was saved with, and the metadata dict.

    Raises:
      CheckpointError: no checkpoint, or one that does not match this kind of run.
    """
    self._manager.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise CheckpointError(
            f"checkpoint directory {self.directory} holds no checkpoint to restore")
    elif step not in self._manager.all_steps():
      raise CheckpointError(f"checkpoint directory {self.directory} has no step {step} "
                            f"(steps on disk: {self.all_steps()})")
    template = jax.tree.map(_abstract_leaf, state_template)
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(template),
        _DATA_STATE: ocp.args.JsonRestore(),
        _METADATA: ocp.args.JsonRestore(),
    })
    try:
      restored = self._manager.restore(step, args=args)
      state = restored[_STATE]
      data_state = _decode_data_state(restored[_DATA_STATE])
      metadata = dict(restored[_METADATA] or {})
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint directory {self.directory} step {step} does not hold a state matching this "
          f"run ({type(error).__name__}: {_first_line(error)})") from error
    return state, data_state, metadata


def _abstract_leaf(leaf: Any) -> Any:
  """Arrays become shape/dtype/sharding descriptions so restoring never copies the template."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if isinstance(leaf, np.generic):
    return np.asarray(leaf)  # Orbax restores numpy arrays but not numpy scalars.
  return leaf


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else "no details"
