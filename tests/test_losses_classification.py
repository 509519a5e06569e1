"""L_cls (Eq. 2), label smoothing and pseudo labels against NumPy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from radi_jax.losses import classification


def _problem(seed, batch=4, answers=7):
  rng = np.random.RandomState(seed)
  logits = 3.0 * rng.randn(batch, answers)
  mask = rng.rand(batch, answers) > 0.3
  mask[:, :3] = True
  counts = rng.randint(0, 4, (batch, answers)) * (rng.rand(batch, answers) > 0.6)
  targets = np.minimum(1.0, counts / 2.0)  # iVQA-style soft targets
  targets[0] = 0.0
  targets[0, 1] = 1.0  # one-hot example
  targets[1] = 0.0  # no labeled answer
  targets[2, ~mask[2]] = 1.0  # weight on padded answers must be ignored
  return logits, targets, mask


def _numpy_loss(z, w, valid, smoothing):
  idx = [a for a in range(len(z)) if valid[a]]
  total_w = sum(w[a] for a in idx)
  if total_w == 0:
    return 0.0
  lse = math.log(sum(math.exp(z[a]) for a in idx))
  loss = 0.0
  for a in idx:
    q = (1 - smoothing) * w[a] / total_w + smoothing / len(idx)
    loss += q * (lse - z[a])
  return loss


def test_classification_loss_matches_numpy():
  with jax.enable_x64(True):
    logits, targets, mask = _problem(0)
    for smoothing in (0.0, 0.3):
      loss = classification.classification_loss(jnp.asarray(logits), jnp.asarray(targets),
                                                jnp.asarray(mask), label_smoothing=smoothing)
      expected = [_numpy_loss(*args, smoothing) for args in zip(logits, targets, mask)]
      np.testing.assert_allclose(loss, expected, atol=1e-10)


def test_pseudo_label_targets_adds_teacher_top_k():
  logits, targets, mask = _problem(1)
  teacher = np.random.RandomState(2).randn(*logits.shape)
  out = np.asarray(classification.pseudo_label_targets(jnp.asarray(targets), jnp.asarray(teacher),
                                                       jnp.asarray(mask), k=2))
  for b in range(logits.shape[0]):
    top = [a for a in np.argsort(-teacher[b]) if mask[b, a]][:2]
    for a in range(logits.shape[1]):
      assert out[b, a] == (max(targets[b, a], 1.0) if a in top else targets[b, a])


def test_classification_loss_jits_with_finite_gradients():
  logits, targets, mask = _problem(3)
  logits[~mask] = 1e30
  fn = jax.jit(jax.grad(lambda z: jnp.sum(classification.classification_loss(
      z, jnp.asarray(targets, jnp.float32), jnp.asarray(mask), label_smoothing=0.1))))
  grad = np.asarray(fn(jnp.asarray(logits, jnp.float32)))
  assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0) and np.any(grad != 0)
