"""Distillation baselines of the RADI paper's Table 2: KD, DKD, CTKD, FitNet and RKD."""

from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from radi_jax.losses import common


def _log_probs(scores, mask, temperature):
  return common.masked_log_softmax(scores / temperature, mask)


def _temperature(temperature, batch):
  """A scalar or `[batch]` temperature as `[batch, 1]`."""
  return jnp.broadcast_to(jnp.asarray(temperature), (batch,))[:, None]


def kd_loss(student: jax.Array, teacher: jax.Array, answer_mask: jax.Array, *,
            temperature: float | jax.Array = 1.0) -> jax.Array:
  """Vanilla knowledge distillation (Hinton et al. 2015): τ² KL(p_t^τ || p_s^τ).

  Args:
    student: `[batch, answers]` student logits.
    teacher: `[batch, answers]` teacher logits.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    temperature: τ, a float or a (traced) scalar / `[batch]` array, e.g. CTKD's learned one.

  Returns:
    `[batch]` losses.
  """
  chex.assert_rank(student, 2)
  chex.assert_equal_shape([student, teacher])
  mask = jnp.broadcast_to(answer_mask, student.shape)
  tau = _temperature(temperature, student.shape[0])
  teacher_log_probs = _log_probs(jax.lax.stop_gradient(teacher), mask, tau)
  student_log_probs = _log_probs(student, mask, tau)
  teacher_probs = jnp.where(mask, jnp.exp(teacher_log_probs), 0.0)
  kl = jnp.sum(teacher_probs * (teacher_log_probs - student_log_probs), -1)
  return tau[:, 0] ** 2 * kl


def _masked_logsumexp(log_values, mask):
  """log sum over `mask` of exp(log_values) (`[batch]`), and whether the set is non-empty."""
  nonempty = jnp.any(mask, -1)
  peak = jax.lax.stop_gradient(jnp.max(jnp.where(mask, log_values, common.lowest(log_values.dtype)), -1))
  peak = jnp.where(nonempty, peak, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, log_values - peak[:, None], 0.0)), 0.0), -1)
  return jnp.where(nonempty, peak + jnp.log(jnp.where(nonempty, total, 1.0)), 0.0), nonempty


def dkd_parts(student: jax.Array, teacher: jax.Array, targets: jax.Array, answer_mask: jax.Array, *,
              temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Target-class and non-target-class KD terms of Decoupled KD (Zhao et al. 2022, Eq. 5-6).

  The target set G is the valid answers with a positive target weight (the ground-truth class
  for one-hot targets). With b = (p_G, 1 - p_G) the binary target / rest probabilities and p̂ the
  distribution renormalised over the valid non-target answers, all at temperature τ:

    TCKD = KL(b_t || b_s),   NCKD = KL(p̂_t || p̂_s),

  and KL(p_t || p_s) = TCKD + (1 - p_{t,G}) NCKD + p_{t,G} KL(within G), whose last term is 0
  when G holds one answer (the identity DKD is built on).

  Args:
    student: `[batch, answers]`.
    teacher: `[batch, answers]`.
    targets: `[batch, answers]` per-answer target weights (> 0 marks a target answer).
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    temperature: τ.

  Returns:
    `(tckd, nckd)`, each `[batch]`, without the τ² factor.
  """
  chex.assert_equal_shape([student, teacher, targets])
  mask = jnp.broadcast_to(answer_mask, student.shape)
  target_set = mask & (targets > 0)
  rest = mask & ~target_set
  teacher_log_probs = _log_probs(jax.lax.stop_gradient(teacher), mask, temperature)
  student_log_probs = _log_probs(student, mask, temperature)

  def binary(log_probs):
    log_target, has_target = _masked_logsumexp(log_probs, target_set)
    log_rest, has_rest = _masked_logsumexp(log_probs, rest)
    return log_target, log_rest, has_target, has_rest

  t_target, t_rest, has_target, has_rest = binary(teacher_log_probs)
  s_target, s_rest, _, _ = binary(student_log_probs)
  tckd = (jnp.where(has_target, jnp.exp(t_target) * (t_target - s_target), 0.0)
          + jnp.where(has_rest, jnp.exp(t_rest) * (t_rest - s_rest), 0.0))
  teacher_rest = common.masked_log_softmax(teacher_log_probs, rest)
  student_rest = common.masked_log_softmax(student_log_probs, rest)
  nckd = jnp.sum(jnp.where(rest, jnp.exp(teacher_rest) * (teacher_rest - student_rest), 0.0), -1)
  return tckd, nckd


def dkd_loss(student: jax.Array, teacher: jax.Array, targets: jax.Array, answer_mask: jax.Array, *,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> jax.Array:
  """Decoupled KD (Zhao et al. 2022): τ² (α TCKD + β NCKD); see `dkd_parts`.

  Returns:
    `[batch]` losses.
  """
  tckd, nckd = dkd_parts(student, teacher, targets, answer_mask, temperature=temperature)
  return temperature ** 2 * (alpha * tckd + beta * nckd)


@jax.custom_vjp
def gradient_reversal(x: jax.Array, scale: jax.Array | float) -> jax.Array:
  """Identity forward; multiplies the incoming gradient by `-scale` backward (CTKD's GRL)."""
  del scale
  return x


def _reversal_forward(x, scale):
  return x, scale


def _reversal_backward(scale, gradient):
  return -scale * gradient, jnp.zeros_like(scale)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


def ctkd_lambda(step: int | jax.Array, total_steps: int, *, lambda_min: float = 0.0,
                lambda_max: float = 1.0) -> jax.Array:
  """CTKD's cosine curriculum for the reversal scale (Li et al. 2023, Eq. 8).

  λ = λ_min + (λ_max - λ_min) (1 - cos(π min(step / total_steps, 1))) / 2: it rises from λ_min
  to λ_max over `total_steps`, so the temperature is made harder to fit only gradually.
  """
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
  return lambda_min + 0.5 * (lambda_max - lambda_min) * (1.0 - jnp.cos(jnp.pi * progress))


class LearnableTemperature(nn.Module):
  """CTKD's global learnable temperature (Li et al. 2023).

  τ = min_temperature + (max_temperature - min_temperature) sigmoid(GRL(θ, λ)): the student
  minimises the KD loss while θ, through the gradient reversal, maximises it.

  Attributes:
    min_temperature: lower bound of τ.
    max_temperature: upper bound of τ.
    init_value: initial θ.
  """
  min_temperature: float = 1.0
  max_temperature: float = 21.0
  init_value: float = 1.0

  @nn.compact
  def __call__(self, reversal_scale: jax.Array | float) -> jax.Array:
    theta = self.param("temperature", nn.initializers.constant(self.init_value), ())
    theta = gradient_reversal(theta, jnp.asarray(reversal_scale, theta.dtype))
    return self.min_temperature + (self.max_temperature - self.min_temperature) * nn.sigmoid(theta)


def ctkd_loss(student: jax.Array, teacher: jax.Array, answer_mask: jax.Array,
              temperature: jax.Array) -> jax.Array:
  """CTKD's distillation term: `kd_loss` at the learned (gradient-reversed) temperature.

  Args:
    student: `[batch, answers]`.
    teacher: `[batch, answers]`.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    temperature: scalar output of `LearnableTemperature`.

  Returns:
    `[batch]` losses.
  """
  return kd_loss(student, teacher, answer_mask, temperature=temperature)


class HintRegressor(nn.Module):
  """FitNet's regressor from the student's hint layer to the teacher's width."""
  features: int

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    return nn.Dense(self.features, name="regressor")(hidden)


def fitnet_loss(student_hidden: jax.Array, teacher_hidden: jax.Array,
                regressor: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """FitNet hint loss (Romero et al. 2015) on the [MASK] representation.

  Mean over features of (r(h_s) - h_t)^2, with r the regressor (identity when None; bind
  parameters first, e.g. `functools.partial(HintRegressor(H).apply, params)`).

  Args:
    student_hidden: `[batch, H_s]`.
    teacher_hidden: `[batch, H_t]`.
    regressor: maps `[batch, H_s]` to `[batch, H_t]`, or None when H_s = H_t.

  Returns:
    `[batch]` losses.
  """
  chex.assert_rank([student_hidden, teacher_hidden], 2)
  hint = student_hidden if regressor is None else regressor(student_hidden)
  chex.assert_equal_shape([hint, teacher_hidden])
  return jnp.mean((hint - jax.lax.stop_gradient(teacher_hidden)) ** 2, -1)


def _smooth_l1(x):
  return jnp.where(jnp.abs(x) < 1.0, 0.5 * x * x, jnp.abs(x) - 0.5)


def _safe_norm(vectors, mask):
  """Euclidean norm over the last axis, 0 (with a 0 gradient) where masked or exactly zero."""
  squared = jnp.sum(vectors * vectors, -1)
  nonzero = mask & (squared > 0)
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0), nonzero


def _pair_distances(feats, pair_mask):
  return _safe_norm(feats[:, None, :] - feats[None, :, :], pair_mask)[0]


def _angles(feats, pair_mask, triple_mask):
  """cos of the angle at vertex a between b and c: <e(x_b - x_a), e(x_c - x_a)>, `[B, B, B]`."""
  diffs = feats[None, :, :] - feats[:, None, :]  # [a, b] -> x_b - x_a
  norms, nonzero = _safe_norm(diffs, pair_mask)
  # Two identical examples have no direction between them: that unit vector is 0.
  unit = jnp.where(nonzero[..., None], diffs / jnp.where(nonzero, norms, 1.0)[..., None], 0.0)
  return jnp.where(triple_mask, jnp.einsum("abh,ach->abc", unit, unit), 0.0)


def rkd_loss(student_feats: jax.Array, teacher_feats: jax.Array, example_mask: jax.Array, *,
             distance_weight: float = 25.0, angle_weight: float = 50.0) -> jax.Array:
  """Relational KD (Park et al. 2019): distance and angle structure of the batch.

  Distance term: smooth-L1 between the pairwise distances of student and teacher features, each
  divided by its mean over valid pairs, averaged over valid pairs i != j. Angle term: smooth-L1
  between the cosines of the angle at x_a of (x_b, x_c), averaged over valid triples of
  distinct examples. Inherently batch-level.

  Args:
    student_feats: `[batch, H_s]` student [MASK] representations.
    teacher_feats: `[batch, H_t]` teacher [MASK] representations.
    example_mask: `[batch]` boolean, False for padded examples.
    distance_weight: weight of the distance term (paper: 25).
    angle_weight: weight of the angle term (paper: 50).

  Returns:
    A scalar loss (0 when fewer than two, resp. three, valid examples).
  """
  chex.assert_rank([student_feats, teacher_feats, example_mask], [2, 2, 1])
  batch = student_feats.shape[0]
  teacher_feats = jax.lax.stop_gradient(teacher_feats)
  eye = jnp.eye(batch, dtype=bool)
  pair_mask = example_mask[:, None] & example_mask[None, :] & ~eye
  triple_mask = pair_mask[:, :, None] & pair_mask[:, None, :] & ~eye[None]
  num_pairs = jnp.sum(pair_mask)

  def normalised_distances(feats):
    distances = _pair_distances(feats, pair_mask)
    mean = common.safe_divide(jnp.sum(distances), num_pairs.astype(feats.dtype))
    return common.safe_divide(distances, jnp.where(mean > 0, mean, 1.0))

  distance_gaps = normalised_distances(student_feats) - normalised_distances(teacher_feats)
  distance_term = common.safe_divide(jnp.sum(jnp.where(pair_mask, _smooth_l1(distance_gaps), 0.0)),
                                     num_pairs.astype(student_feats.dtype))
  angle_gaps = (_angles(student_feats, pair_mask, triple_mask)
                - _angles(teacher_feats, pair_mask, triple_mask))
  angle_term = common.safe_divide(jnp.sum(jnp.where(triple_mask, _smooth_l1(angle_gaps), 0.0)),
                                  jnp.sum(triple_mask).astype(student_feats.dtype))
  return distance_weight * distance_term + angle_weight * angle_term
