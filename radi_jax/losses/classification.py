"""The classification loss L_cls (RADI paper, Eq. 2) and its label variants."""

import chex
import jax
import jax.numpy as jnp

from radi_jax.losses import common


def classification_loss(logits: jax.Array,
                        targets: jax.Array,
                        answer_mask: jax.Array,
                        *,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Multi-positive cross-entropy over the answer vocabulary (RADI paper, Eq. 2).

  The loss of one example is the mean of `-log softmax(z)[a]` over its labeled answers `a`,
  weighted by the per-answer targets:

    L = sum_a w_a * (-log p_a) / sum_a w_a.

  With label smoothing `s`, the normalised targets `w / sum(w)` are mixed with the uniform
  distribution over the valid answers: `q = (1 - s) * w / sum(w) + s / n_valid`, and
  `L = -sum_a q_a log p_a`; `s = 0` gives the formula above.

  Args:
    logits: `[batch, answers]` student scores `z`.
    targets: `[batch, answers]` non-negative per-answer weights: one-hot, or iVQA-style
      `min(1, count / 2)`. Weights on masked answers are ignored.
    answer_mask: `[answers]` or `[batch, answers]` boolean, True for real answers.
    label_smoothing: the smoothing mass `s` in [0, 1).

  Returns:
    `[batch]` per-example losses; 0 for an example without any labeled valid answer.
  """
  chex.assert_rank(logits, 2)
  chex.assert_equal_shape([logits, targets])
  mask = jnp.broadcast_to(answer_mask, logits.shape)
  weights = jnp.where(mask, targets, 0.0).astype(logits.dtype)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  target_distribution = common.safe_divide(weights, total)
  if label_smoothing:
    num_valid = jnp.sum(mask, axis=-1, keepdims=True).astype(logits.dtype)
    uniform = common.safe_divide(mask.astype(logits.dtype), num_valid)
    target_distribution = (1.0 - label_smoothing) * target_distribution + label_smoothing * uniform
  log_probs = common.masked_log_softmax(logits, mask)
  loss = -jnp.sum(target_distribution * log_probs, axis=-1)
  return jnp.where(total[:, 0] > 0, loss, 0.0)


def pseudo_label_targets(targets: jax.Array,
                         teacher_logits: jax.Array,
                         answer_mask: jax.Array,
                         *,
                         k: int) -> jax.Array:
  """Adds the teacher's top-k answers as positives with weight 1 (pseudo-label baseline).

  Args:
    targets: `[batch, answers]` per-answer weights.
    teacher_logits: `[batch, answers]` teacher scores.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    k: how many teacher answers become positives (paper: 3, 5 or 10).

  Returns:
    `[batch, answers]` targets: `max(targets, 1)` on the teacher's top-k valid answers.
  """
  chex.assert_equal_shape([targets, teacher_logits])
  mask = jnp.broadcast_to(answer_mask, teacher_logits.shape)
  scores = jnp.where(mask, jax.lax.stop_gradient(teacher_logits), common.lowest(teacher_logits.dtype))
  _, top = jax.lax.top_k(scores, min(k, scores.shape[-1]))
  top_valid = jnp.take_along_axis(mask, top, axis=-1)
  hits = jnp.zeros(targets.shape, bool).at[jnp.arange(targets.shape[0])[:, None], top].set(top_valid)
  return jnp.where(hits, jnp.maximum(targets, 1.0), targets)
