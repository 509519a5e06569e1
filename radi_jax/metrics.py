"""Ranking metrics for open-ended VideoQA: Acc@1, Hit@5 and nDCG@5 with graded relevance.

Relevance of an answer is `min(1, count / 2)` where several annotations exist (iVQA: five
annotators), else 1 for the labeled answer (DESIGN §4). `ranking_metrics` is a pure, jit-able
function giving per-example values; `RankingMetricsAccumulator` sums them over batches on the
host, leaving out padded examples.
"""

from collections.abc import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

CUTOFF = 5


def ranking_metrics(logits: jax.Array, relevance: jax.Array,
                    answer_mask: jax.Array) -> dict[str, jax.Array]:
  """Per-example Acc@1, Hit@5 and nDCG@5.

  Acc@1 = rel(top-1 answer); Hit@5 = max rel over the top 5; nDCG@5 = DCG@5 / ideal DCG@5 with
  gains rel and discount 1 / log2(1 + position), the ideal ranking sorting the relevance
  itself. Ties in `logits` go to the lower answer id.

  Args:
    logits: `[batch, answers]` model scores.
    relevance: `[batch, answers]` graded relevance in [0, 1].
    answer_mask: `[answers]` or `[batch, answers]` boolean; masked answers are never ranked.

  Returns:
    A dict with `acc1`, `hit5`, `ndcg5`, each `[batch]` (nDCG is 0 when nothing is relevant).
  """
  chex.assert_rank(logits, 2)
  chex.assert_equal_shape([logits, relevance])
  mask = jnp.broadcast_to(answer_mask, logits.shape)
  cutoff = min(CUTOFF, logits.shape[-1])
  relevance = jnp.where(mask, relevance, 0.0).astype(jnp.float32)
  _, top = jax.lax.top_k(jnp.where(mask, logits, jnp.finfo(logits.dtype).min), cutoff)
  ranked = jnp.take_along_axis(relevance, top, -1)  # masked answers carry relevance 0
  discounts = 1.0 / jnp.log2(1.0 + jnp.arange(1, cutoff + 1, dtype=jnp.float32))
  ideal, _ = jax.lax.top_k(relevance, cutoff)
  dcg = jnp.sum(ranked * discounts, -1)
  ideal_dcg = jnp.sum(ideal * discounts, -1)
  return {
      "acc1": ranked[:, 0],
      "hit5": jnp.max(ranked, -1),
      "ndcg5": jnp.where(ideal_dcg > 0, dcg / jnp.where(ideal_dcg > 0, ideal_dcg, 1.0), 0.0),
  }


class RankingMetricsAccumulator:
  """Averages per-example metrics over batches, leaving out padded examples.

  Per-type accuracy (`acc1/<type>`) is reported for every question type seen.

  Args:
    type_names: names of the question types by id; types without a name are shown by id.
  """

  def __init__(self, type_names: Sequence[str] | None = None):
    self._type_names = list(type_names or [])
    self._sums: dict[str, float] = {}
    self._count = 0
    self._type_sums: dict[int, float] = {}
    self._type_counts: dict[int, int] = {}

  def add(self, per_example: Mapping[str, np.ndarray], valid: np.ndarray,
          type_id: np.ndarray | None = None) -> None:
    """Adds one batch.

    Args:
      per_example: metric name -> `[batch]` values (e.g. from `ranking_metrics`).
      valid: `[batch]` boolean, False for padded examples.
      type_id: `[batch]` int question type, -1 for none; None when the data has no types.
    """
    valid = np.asarray(valid, bool)
    for name, values in per_example.items():
      values = np.asarray(values, np.float64)
      self._sums[name] = self._sums.get(name, 0.0) + float(values[valid].sum())
    self._count += int(valid.sum())
    if type_id is None or "acc1" not in per_example:
      return
    type_id = np.asarray(type_id)
    acc1 = np.asarray(per_example["acc1"], np.float64)
    for t in np.unique(type_id[valid & (type_id >= 0)]):
      chosen = valid & (type_id == t)
      self._type_sums[int(t)] = self._type_sums.get(int(t), 0.0) + float(acc1[chosen].sum())
      self._type_counts[int(t)] = self._type_counts.get(int(t), 0) + int(chosen.sum())

  def result(self) -> dict[str, float]:
    """Means over the valid examples seen so far, `num_examples`, and `acc1/<type>`."""
    out = {name: total / self._count if self._count else 0.0 for name, total in self._sums.items()}
    out["num_examples"] = self._count
    for t in sorted(self._type_counts):
      name = self._type_names[t] if t < len(self._type_names) else str(t)
      out[f"acc1/{name}"] = self._type_sums[t] / self._type_counts[t]
    return out
