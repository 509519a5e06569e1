"""KD, DKD, CTKD, FitNet and RKD against NumPy loops written here."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radi_jax.losses import baselines


def _problem(seed, batch=3, answers=8):
  rng = np.random.RandomState(seed)
  student = 2.0 * rng.randn(batch, answers)
  teacher = 2.0 * rng.randn(batch, answers)
  mask = rng.rand(batch, answers) > 0.3
  mask[:, :3] = True
  targets = np.zeros((batch, answers))
  targets[np.arange(batch), rng.randint(0, 3, batch)] = 1.0
  return student, teacher, mask, targets


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _kl(p, q):
  return sum(p[i] * math.log(p[i] / q[i]) for i in range(len(p)) if p[i] > 0)


def test_kd_matches_numpy():
  with jax.enable_x64(True):
    s, t, m, _ = _problem(0)
    loss = baselines.kd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(m), temperature=3.0)
    for b in range(3):
      expected = 9.0 * _kl(_softmax(t[b][m[b]] / 3), _softmax(s[b][m[b]] / 3))
      np.testing.assert_allclose(loss[b], expected, atol=1e-10)


def _numpy_dkd_parts(s, t, target, valid, tau):
  ps, pt = _softmax(s[valid] / tau), _softmax(t[valid] / tau)
  in_target = target[valid] > 0
  bs = np.array([ps[in_target].sum(), ps[~in_target].sum()])
  bt = np.array([pt[in_target].sum(), pt[~in_target].sum()])
  tckd = _kl(bt, bs)
  nckd = _kl(pt[~in_target] / bt[1], ps[~in_target] / bs[1])
  within = _kl(pt[in_target] / bt[0], ps[in_target] / bs[0])
  return tckd, nckd, bt[0], within


def test_dkd_matches_numpy_and_decomposes_kd():
  with jax.enable_x64(True):
    s, t, m, targets = _problem(1)
    # Example 2 gets two target answers: the identity then needs the within-target term.
    targets[2, :3] = [1.0, 0.5, 0.0]
    args = jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(m)
    tckd, nckd = baselines.dkd_parts(*args, temperature=2.0)
    dkd = baselines.dkd_loss(*args, alpha=0.7, beta=3.0, temperature=2.0)
    kd = baselines.kd_loss(args[0], args[1], args[3], temperature=2.0)
    for b in range(3):
      e_tckd, e_nckd, p_target, within = _numpy_dkd_parts(s[b], t[b], targets[b], m[b], 2.0)
      np.testing.assert_allclose([tckd[b], nckd[b]], [e_tckd, e_nckd], atol=1e-10)
      np.testing.assert_allclose(dkd[b], 4.0 * (0.7 * e_tckd + 3.0 * e_nckd), atol=1e-10)
      # KD / τ² = TCKD + (1 - p_target) NCKD + p_target KL(within target); the last term is 0
      # for one-hot targets (examples 0 and 1).
      identity = tckd[b] + (1 - p_target) * nckd[b] + p_target * within
      np.testing.assert_allclose(kd[b] / 4.0, identity, atol=1e-10)
      if b < 2:
        np.testing.assert_allclose(kd[b] / 4.0, tckd[b] + (1 - p_target) * nckd[b], atol=1e-10)


def test_gradient_reversal_and_curriculum():
  x = jnp.asarray([1.0, -2.0])
  assert np.array_equal(baselines.gradient_reversal(x, 0.3), x)
  grad = jax.grad(lambda v: jnp.sum(baselines.gradient_reversal(v, 0.3) ** 2))(x)
  np.testing.assert_allclose(grad, -0.3 * 2 * np.asarray(x), rtol=1e-6)
  for step, total in [(0, 10), (5, 10), (3, 10), (10, 10), (20, 10)]:
    expected = 0.1 + 0.5 * (0.9 - 0.1) * (1 - math.cos(math.pi * min(step / total, 1)))
    np.testing.assert_allclose(baselines.ctkd_lambda(step, total, lambda_min=0.1, lambda_max=0.9),
                               expected, rtol=1e-6)


def test_learnable_temperature_is_trained_adversarially():
  s, t, m, _ = _problem(2)
  module = baselines.LearnableTemperature(min_temperature=1.0, max_temperature=5.0, init_value=0.2)
  params = module.init(jax.random.key(0), 1.0)
  tau = module.apply(params, 1.0)
  np.testing.assert_allclose(tau, 1.0 + 4.0 / (1.0 + math.exp(-0.2)), rtol=1e-6)

  def loss(p, scale):
    temperature = module.apply(p, scale)
    return jnp.sum(baselines.ctkd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                       jnp.asarray(m), temperature))

  def kd_at_plain_temperature(p):
    temperature = 1.0 + 4.0 * jax.nn.sigmoid(p["params"]["temperature"])
    return jnp.sum(baselines.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                     jnp.asarray(m), temperature=temperature))

  plain = jax.grad(kd_at_plain_temperature)(params)
  reversed_ = jax.jit(jax.grad(loss))(params, 0.5)
  assert plain["params"]["temperature"] != 0
  np.testing.assert_allclose(reversed_["params"]["temperature"],
                             -0.5 * plain["params"]["temperature"], rtol=1e-5)


def test_fitnet_matches_numpy():
  rng = np.random.RandomState(3)
  hs, ht = rng.randn(4, 5).astype(np.float32), rng.randn(4, 3).astype(np.float32)
  regressor = baselines.HintRegressor(3)
  params = regressor.init(jax.random.key(0), jnp.asarray(hs))
  loss = baselines.fitnet_loss(jnp.asarray(hs), jnp.asarray(ht),
                               lambda h: regressor.apply(params, h))
  w = np.asarray(params["params"]["regressor"]["kernel"])
  bias = np.asarray(params["params"]["regressor"]["bias"])
  for b in range(4):
    hint = [sum(hs[b, i] * w[i, j] for i in range(5)) + bias[j] for j in range(3)]
    np.testing.assert_allclose(loss[b], np.mean([(hint[j] - ht[b, j]) ** 2 for j in range(3)]),
                               rtol=1e-5)
  plain = baselines.fitnet_loss(jnp.asarray(hs[:, :3]), jnp.asarray(ht))
  np.testing.assert_allclose(plain, ((hs[:, :3] - ht) ** 2).mean(1), rtol=1e-6)


def _numpy_rkd(s, t, valid, wd, wa):
  idx = np.flatnonzero(valid)
  huber = lambda x: 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
  pairs = [(i, j) for i in idx for j in idx if i != j]

  def distances(x):
    d = {p: np.linalg.norm(x[p[0]] - x[p[1]]) for p in pairs}
    mean = np.mean(list(d.values()))
    return {p: v / mean for p, v in d.items()}

  ds, dt = distances(s), distances(t)
  distance = np.mean([huber(ds[p] - dt[p]) for p in pairs])

  def cos(x, a, b, c):
    u, v = x[b] - x[a], x[c] - x[a]
    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

  triples = [(a, b, c) for a, b, c in itertools.permutations(idx, 3)]
  angle = np.mean([huber(cos(s, *k) - cos(t, *k)) for k in triples])
  return wd * distance + wa * angle


def test_rkd_matches_numpy():
  with jax.enable_x64(True):
    rng = np.random.RandomState(4)
    s, t = rng.randn(6, 4), rng.randn(6, 5)
    valid = np.array([1, 1, 0, 1, 1, 0], bool)
    loss = baselines.rkd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(valid),
                              distance_weight=2.0, angle_weight=3.0)
    np.testing.assert_allclose(loss, _numpy_rkd(s, t, valid, 2.0, 3.0), atol=1e-10)


def test_every_baseline_jits_with_finite_gradients():
  s, t, m, targets = _problem(5)
  s[~m] = 1e30  # padded answers with absurd scores
  s, t, targets = (jnp.asarray(a, jnp.float32) for a in (s, t, targets))
  m = jnp.asarray(m)
  feats = jnp.asarray(np.random.RandomState(5).randn(4, 4), jnp.float32)
  feats = feats.at[2].set(feats[0])  # duplicate example: zero distance
  feats = feats.at[3].set(1e30)  # padded example
  example_mask = jnp.asarray([True, True, True, False])
  losses = {
      "kd": lambda x: baselines.kd_loss(x, t, m, temperature=4.0),
      "dkd": lambda x: baselines.dkd_loss(x, t, targets, m),
      "ctkd": lambda x: baselines.ctkd_loss(x, t, m, jnp.asarray(3.0)),
  }
  for name, fn in losses.items():
    value, grad = jax.jit(jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x))))(s)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name
    assert np.all(np.asarray(grad)[~np.broadcast_to(np.asarray(m), s.shape)] == 0), name
  features = {
      "fitnet": lambda f: jnp.sum(baselines.fitnet_loss(f, feats[:, ::-1])),
      "rkd": lambda f: baselines.rkd_loss(f, feats[:, ::-1], example_mask),
  }
  for name, fn in features.items():
    value, grad = jax.jit(jax.value_and_grad(fn))(feats)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name
    assert np.any(np.asarray(grad) != 0), name
    if name == "rkd":
      assert np.all(np.asarray(grad)[3] == 0)  # the padded example gets no gradient
