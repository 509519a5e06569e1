"""RADI-L (Eq. 6-9): partial-list sampling and listwise losses against NumPy loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radi_jax.losses import common
from radi_jax.losses import listwise


def _random_lists(seed, batch=3, size=7):
  rng = np.random.RandomState(seed)
  student = rng.randn(batch, size)
  teacher = 2.0 * rng.randn(batch, size)
  valid = rng.rand(batch, size) > 0.25
  valid[:, 0] = True
  valid[-1] = False  # an empty list must give 0
  return student, teacher, valid


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _numpy_listmle(z, t, valid):
  order = [i for i in np.argsort(-t, kind="stable") if valid[i]]
  total = 0.0
  for p, i in enumerate(order):
    rest = [z[j] for j in order[p:]]
    total -= z[i] - np.log(np.sum(np.exp(rest)))
  return total


def _numpy_listnet(z, t, valid):
  if not valid.any():
    return 0.0
  target = np.exp(_log_softmax(t[valid]))
  return -np.sum(target * _log_softmax(z[valid]))


def _numpy_lambda(z, t, valid, weighting, sigma=1.0, mu=10.0, eps=1e-10):
  """allRank's lambdaLoss, written with loops over list positions."""
  idx = np.flatnonzero(valid)
  if len(idx) == 0:
    return 0.0
  probs = np.exp(_log_softmax(t[idx]))
  rel = probs / probs.max()
  z = z[idx]
  order = sorted(range(len(idx)), key=lambda a: -z[a])  # student ranking
  n = len(idx)
  disc = lambda pos: np.log2(1.0 + pos)  # pos counts from 1
  ideal = sorted(rel, reverse=True)
  max_dcg = max(sum((2 ** ideal[p] - 1) / disc(p + 1) for p in range(n)), eps)
  gain = [(2 ** rel[order[p]] - 1) / max_dcg for p in range(n)]
  total = 0.0
  for p, q in itertools.product(range(n), repeat=2):
    if weighting != "ndcg1" and not rel[order[p]] > rel[order[q]]:
      continue
    gap = abs(gain[p] - gain[q])
    delta = 0.0 if p == q else abs(1 / disc(abs(p - q)) - 1 / disc(abs(p - q) + 1))
    weight = {"ranknet": 1.0,
              "ndcg1": gain[p] / disc(p + 1),
              "ndcg2": delta * gap,
              "ndcg2pp": mu * delta * gap + abs(1 / disc(p + 1) - 1 / disc(q + 1)) * gap}[weighting]
    sig = 1.0 / (1.0 + np.exp(-sigma * (z[order[p]] - z[order[q]])))
    total -= np.log2(max(max(sig, eps) ** weight, eps))
  return total


def test_listmle_matches_numpy():
  with jax.enable_x64(True):
    z, t, valid = _random_lists(0)
    loss = listwise.listmle(jnp.asarray(z), jnp.asarray(t), jnp.asarray(valid))
    expected = [_numpy_listmle(*args) for args in zip(z, t, valid)]
    np.testing.assert_allclose(loss, expected, atol=1e-10)


def test_listnet_and_stlistnet_match_numpy():
  with jax.enable_x64(True):
    z, t, valid = _random_lists(1)
    loss = listwise.listnet(jnp.asarray(z), jnp.asarray(t), jnp.asarray(valid), temperature=2.0)
    expected = [_numpy_listnet(a / 2.0, b / 2.0, m) for a, b, m in zip(z, t, valid)]
    np.testing.assert_allclose(loss, expected, atol=1e-10)
    key = jax.random.key(3)
    loss = listwise.stlistnet(jnp.asarray(z), jnp.asarray(t), jnp.asarray(valid), key, beta=0.5)
    noise = np.stack([np.asarray(jax.random.gumbel(k, t.shape[1:], jnp.float64))
                      for k in jax.random.split(key, t.shape[0])])
    expected = [_numpy_listnet(a, b, m) for a, b, m in zip(z, t + 0.5 * noise, valid)]
    np.testing.assert_allclose(loss, expected, atol=1e-10)


def test_listnet_unchanged_by_adding_a_constant():
  z, t, valid = _random_lists(2)
  args = jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(valid)
  base = listwise.listnet(*args)
  np.testing.assert_allclose(listwise.listnet(args[0] + 7.5, args[1], args[2]), base, atol=1e-5)
  np.testing.assert_allclose(listwise.listnet(args[0], args[1] - 3.0, args[2]), base, atol=1e-5)


@pytest.mark.parametrize("weighting", listwise.LAMBDA_WEIGHTINGS)
def test_lambda_loss_matches_numpy(weighting):
  with jax.enable_x64(True):
    z, t, valid = _random_lists(4)
    loss = listwise.lambda_loss(jnp.asarray(z), jnp.asarray(t), jnp.asarray(valid),
                                weighting=weighting)
    expected = [_numpy_lambda(a, b, m, weighting) for a, b, m in zip(z, t, valid)]
    np.testing.assert_allclose(loss, expected, atol=1e-10)


@pytest.mark.parametrize("sampling", listwise.SAMPLINGS)
def test_partial_list_structure(sampling):
  rng = np.random.RandomState(5)
  batch, answers, k_hot, n_cold = 64, 20, 4, 5
  teacher = rng.randn(batch, answers)
  mask = rng.rand(batch, answers) > 0.3
  mask[0, :] = False
  mask[0, :6] = True  # only 2 answers after the hot list: the cold list must run short
  indices, valid = listwise.sample_partial_list(jnp.asarray(teacher), jnp.asarray(mask),
                                                jax.random.key(0), k_hot=k_hot, n_cold=n_cold,
                                                sampling=sampling, decay=0.5)
  indices, valid = np.asarray(indices), np.asarray(valid)
  size = answers if sampling == "full" else k_hot + n_cold
  assert indices.shape == valid.shape == (batch, size)
  for b in range(batch):
    order = [a for a in np.argsort(-teacher[b]) if mask[b, a]]
    chosen = list(indices[b][valid[b]])
    assert len(set(chosen)) == len(chosen), "an answer was drawn twice"
    assert all(mask[b, a] for a in chosen), "a padded answer was drawn"
    ranks = [order.index(a) for a in chosen]
    assert ranks == sorted(ranks), "list not in teacher order"
    assert valid[b].sum() == min(size, len(order))
    if sampling in ("zipf", "exp"):
      assert chosen[:k_hot] == order[:k_hot], "hot list is not the teacher's top answers"
      assert set(chosen[k_hot:]).isdisjoint(order[:k_hot]), "hot answer in the cold list"
    if sampling == "full":
      assert chosen == order


@pytest.mark.parametrize("sampling,decay", [("zipf", 1.2), ("exp", 0.3)])
def test_cold_list_first_draw_frequencies(sampling, decay):
  """One cold draw per row over 40000 rows: each rank's frequency within 5 standard errors."""
  draws, answers, k_hot = 40000, 12, 3
  teacher = np.tile(-np.arange(answers, dtype=np.float32), (draws, 1))  # answer a has rank a
  indices, _ = listwise.sample_partial_list(jnp.asarray(teacher), jnp.ones(answers, bool),
                                            jax.random.key(11), k_hot=k_hot, n_cold=1,
                                            sampling=sampling, decay=decay)
  cold = np.asarray(indices)[:, -1]
  ranks = np.arange(1, answers - k_hot + 1)
  weights = ranks ** -decay if sampling == "zipf" else np.exp(-decay * ranks)
  expected = weights / weights.sum()
  observed = np.bincount(cold - k_hot, minlength=len(ranks)) / draws
  tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
  np.testing.assert_array_less(np.abs(observed - expected), tolerance)


@pytest.mark.parametrize("loss", listwise.LISTWISE_LOSSES)
def test_radi_listwise_loss_jits_with_finite_gradients(loss):
  rng = np.random.RandomState(6)
  student = rng.randn(2, 16).astype(np.float32)
  teacher = rng.randn(2, 16).astype(np.float32)
  mask = np.ones((2, 16), bool)
  mask[:, -4:] = False
  student[:, -4:] = 1e30  # padded answers with absurd scores must not leak
  teacher[:, -4:] = 1e30

  @jax.jit
  def grad(s):
    def total(s):
      return jnp.sum(listwise.radi_listwise_loss(s, jnp.asarray(teacher), jnp.asarray(mask),
                                                 jax.random.key(1), k_hot=3, n_cold=4,
                                                 sampling="zipf", loss=loss))
    return jax.value_and_grad(total)(s)

  value, g = grad(jnp.asarray(student))
  assert np.isfinite(value) and np.all(np.isfinite(g))
  assert np.all(np.asarray(g)[:, -4:] == 0)
  assert np.any(np.asarray(g) != 0)


def test_unknown_sampling_is_one_clear_error():
  with pytest.raises(common.LossConfigError, match="sampling='zip'"):
    listwise.sample_partial_list(jnp.zeros((1, 4)), jnp.ones(4, bool), jax.random.key(0),
                                 sampling="zip")


def test_per_example_keys_make_the_loss_independent_of_batching():
  z, t, valid = _random_lists(7, batch=3, size=12)
  keys = jax.random.split(jax.random.key(4), 3)
  args = jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32), jnp.ones(12, bool)
  loss_fn = jax.jit(lambda s, t, m, k: listwise.radi_listwise_loss(s, t, m, k, k_hot=2, n_cold=3,
                                                                   loss="stlistnet"))
  whole = loss_fn(*args, keys)
  for b in range(3):
    alone = loss_fn(args[0][b:b + 1], args[1][b:b + 1], args[2], keys[b:b + 1])
    np.testing.assert_allclose(alone[0], whole[b], rtol=1e-6)
  with pytest.raises(common.LossConfigError, match="rng holds 2 keys; expected one key or 3"):
    listwise.radi_listwise_loss(*args, keys[:2])
