"""Acc@1, Hit@5, nDCG@5 and their accumulation, against NumPy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from radi_jax import metrics


def _numpy_metrics(logits, relevance, valid):
  order = sorted((a for a in range(len(logits)) if valid[a]), key=lambda a: (-logits[a], a))[:5]
  ranked = [relevance[a] for a in order]
  ideal = sorted((relevance[a] for a in range(len(logits)) if valid[a]), reverse=True)[:5]
  dcg = sum(r / math.log2(1 + p) for p, r in enumerate(ranked, start=1))
  ideal_dcg = sum(r / math.log2(1 + p) for p, r in enumerate(ideal, start=1))
  return ranked[0], max(ranked), dcg / ideal_dcg if ideal_dcg else 0.0


def test_ranking_metrics_match_numpy():
  rng = np.random.RandomState(0)
  batch, answers = 6, 9
  logits = rng.randn(batch, answers).astype(np.float32)
  counts = rng.randint(0, 4, (batch, answers)) * (rng.rand(batch, answers) > 0.7)
  relevance = np.minimum(1.0, counts / 2.0)
  mask = rng.rand(batch, answers) > 0.2
  mask[0, 4:] = False  # fewer than five valid answers
  relevance[1] = 0.0  # nothing relevant
  logits[2, ~mask[2]] = 100.0  # padded answers must never be ranked
  relevance[2, ~mask[2]] = 1.0
  logits[3, :2] = 5.0  # a tie for the top
  out = jax.jit(metrics.ranking_metrics)(jnp.asarray(logits), jnp.asarray(relevance),
                                         jnp.asarray(mask))
  for b in range(batch):
    relevance_b = np.where(mask[b], relevance[b], 0.0)
    expected = _numpy_metrics(logits[b], relevance_b, mask[b])
    np.testing.assert_allclose([out["acc1"][b], out["hit5"][b], out["ndcg5"][b]], expected,
                               atol=1e-6)


def test_accumulator_ignores_padding_and_reports_types():
  acc = metrics.RankingMetricsAccumulator(type_names=["what", "where"])
  acc.add({"acc1": np.array([1.0, 0.0, 0.5]), "hit5": np.array([1.0, 1.0, 1.0])},
          valid=np.array([True, True, False]), type_id=np.array([0, 1, 0]))
  acc.add({"acc1": np.array([0.5, 1.0]), "hit5": np.array([0.0, 1.0])},
          valid=np.array([True, True]), type_id=np.array([0, -1]))
  result = acc.result()
  assert result["num_examples"] == 4
  np.testing.assert_allclose(result["acc1"], (1.0 + 0.0 + 0.5 + 1.0) / 4)
  np.testing.assert_allclose(result["hit5"], 3.0 / 4)
  np.testing.assert_allclose(result["acc1/what"], (1.0 + 0.5) / 2)
  np.testing.assert_allclose(result["acc1/where"], 0.0)
  assert set(result) == {"acc1", "hit5", "num_examples", "acc1/what", "acc1/where"}
