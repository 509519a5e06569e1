"""Data parallelism over every device of every process: sharded `jit` (default) or `pmap`.

`jit` mode builds a one-axis mesh ('data') over all devices; batches are sharded along it, the train
state is replicated and donated. Each process feeds only its own part of the global batch
(`jax.make_array_from_process_local_data`). `pmap` mode maps over the local devices and averages
gradients with a `psum` inside the step (see `steps.train_step`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from radi_jax.training import errors

PyTree = Any
MODES = ('jit', 'pmap')


class DataParallel:
  """Places arrays on devices and compiles steps for one data-parallel mode."""

  def __init__(self, mode: str):
    if mode not in MODES:
      raise errors.ConfigError(f'parallel.mode: expected one of {MODES}, got {mode!r}')
    self.mode = mode
    self.num_devices = jax.device_count()
    self.num_local_devices = jax.local_device_count()
    if mode == 'jit':
      self.mesh = jax.make_mesh((self.num_devices,), ('data',),
                                axis_types=(jax.sharding.AxisType.Auto,))
      self.batch_sharding = NamedSharding(self.mesh, P('data'))
      self.replicated = NamedSharding(self.mesh, P())

  def check_batch_size(self, key: str, global_batch: int) -> int:
    """Returns the per-process batch size, or fails with one line naming the config key."""
    if global_batch % self.num_devices:
      raise errors.ConfigError(
          f'{key}={global_batch} does not divide by the {self.num_devices} devices; '
          f'use a multiple of {self.num_devices}')
    return global_batch // jax.process_count()

  def replicate(self, tree: PyTree) -> PyTree:
    """The same value on every device (every process must pass the same value)."""
    if self.mode == 'pmap':
      # One copy per local device along a leading axis, as pmap expects.
      sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.local_devices()), ('local',)),
                               P('local'))
      return jax.tree.map(lambda x: jax.device_put(
          np.broadcast_to(np.asarray(x), (self.num_local_devices,) + np.shape(x)), sharding), tree)
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(put, tree)

  def shard_batch(self, batch: dict) -> dict:
    """This process's part of the global batch, placed on the devices."""
    if self.mode == 'pmap':
      n = self.num_local_devices
      return jax.tree.map(lambda x: np.reshape(x, (n, x.shape[0] // n) + x.shape[1:]), batch)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)), batch)

  def compile_train_step(self, step_fn: Callable, **static) -> Callable:
    """`step_fn(state, frozen, teacher_head, batch, **static)` jitted or pmapped, state donated."""
    if self.mode == 'pmap':
      fn = functools.partial(step_fn, axis_name='data', **static)
      return jax.pmap(fn, axis_name='data', in_axes=(0, 0, 0, 0), donate_argnums=(0,))
    return jax.jit(functools.partial(step_fn, **static), donate_argnums=(0,))

  def compile_batch_fn(self, fn: Callable, **static) -> Callable:
    """`fn(params, batch, **static)` for forward-only work (eval, cache): per-example outputs."""
    if self.mode == 'pmap':
      return jax.pmap(functools.partial(fn, **static), in_axes=(0, 0))
    return jax.jit(functools.partial(fn, **static),
                   out_shardings=self.batch_sharding)

  def to_host(self, tree: PyTree) -> PyTree:
    """Per-example outputs back as this process's rows (numpy), in batch order."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: np.reshape(np.asarray(x), (-1,) + x.shape[2:]), tree)
    def local_rows(x):
      shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.concatenate([np.asarray(s.data) for s in shards], axis=0)
    return jax.tree.map(local_rows, tree)

  def scalar(self, tree: PyTree) -> PyTree:
    """Replicated values (metrics, the train state) as host numpy values."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
