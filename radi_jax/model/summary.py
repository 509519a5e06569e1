"""Parameter counts of a FrozenBiLM config per module, trainable vs frozen, without allocating weights.

    python -m radi_jax.model.summary --config configs/models/deberta_v2_xlarge.py

The config file's `get_config()` may return a model preset or a whole training config (then its
`model` section is used).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from ml_collections import config_flags

from radi_jax.model.config import FrozenBiLMConfig, ModelError, model_config
from radi_jax.model.frozenbilm import FrozenBiLM, trainable_mask


@dataclasses.dataclass(frozen=True)
class ParameterSummary:
  """Per-module `(module, trainable, frozen)` rows and the totals."""

  rows: tuple[tuple[str, int, int], ...]
  trainable: int
  total: int


def abstract_params(config: FrozenBiLMConfig) -> Any:
  """The parameter tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  model = FrozenBiLM(config)
  ids = jnp.zeros((1, 2), jnp.int32)
  frames = jnp.zeros((1, 1, config.features_dim), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, jnp.ones_like(ids), frames,
                                           jnp.ones((1, 1), jnp.int32), jnp.zeros((1,), jnp.int32),
                                           deterministic=True))["params"]


def summarize(config: FrozenBiLMConfig, *, depth: int = 3, train_answer_head: bool | None = None) -> ParameterSummary:
  """Counts parameters per module (path prefix of `depth` names), trainable vs frozen.

  Args:
    config: the model.
    depth: how many path components name a module row.
    train_answer_head: count the answer head as trainable (default: `not config.freeze_last`).

  Returns:
    The summary.
  """
  if train_answer_head is None:
    train_answer_head = not config.freeze_last
  params = abstract_params(config)
  mask = trainable_mask(params, train_answer_head=train_answer_head)
  counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for (path, leaf), trainable in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask)):
    names = [p.key for p in path[:-1]] or [path[-1].key]
    counts["/".join(names[:depth])][0 if trainable else 1] += int(np.prod(leaf.shape))
  rows = tuple((name, t, f) for name, (t, f) in counts.items())
  trainable = sum(r[1] for r in rows)
  return ParameterSummary(rows, trainable, trainable + sum(r[2] for r in rows))


def format_summary(summary: ParameterSummary) -> str:
  width = max(len(r[0]) for r in summary.rows)
  lines = [f"{'module':<{width}}  {'trainable':>13}  {'frozen':>13}"]
  lines += [f"{name:<{width}}  {t:>13,}  {f:>13,}" for name, t, f in summary.rows]
  lines.append(f"{'total':<{width}}  {summary.trainable:>13,}  {summary.total - summary.trainable:>13,}")
  lines.append(f"trainable {summary.trainable / 1e6:.2f}M of {summary.total / 1e6:.2f}M parameters "
               f"({100 * summary.trainable / summary.total:.2f}%)")
  return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file("config", None, "model preset or training config file", lock_config=True)


def main(argv: list[str]) -> int:
  del argv
  config = _CONFIG.value
  if config is None:
    print("error: --config is required", file=sys.stderr)
    return 2
  if "model" in config:
    config = config.model
  try:
    print(format_summary(summarize(model_config(config))))
  except ModelError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
