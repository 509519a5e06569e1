"""RADI-P: adaptive pairwise ranking distillation (RADI paper, Eq. 4-5 and Algorithm 1).

The loss is split into a teacher side, computed once per training example (in the `cache`
stage), and a student side, one O(N_p^2) elementwise pass per step:

  teacher side: `teacher_top_answers` -> the N_p answers to rank;
                `uncertainty_points`  -> x_i in R^T from T MC-dropout scorings;
                `teacher_pair_weights` -> Sinkhorn scalings (u, v), lambda and the mean weight.
  student side: `pairwise_ranking_loss` -> hinge with margins M_ij = m W_ij / mean(W), where
                W_ij = u_i exp(-|x_i - x_j|^2 / lambda) v_j is rebuilt from the cached numbers,
                dense or in row blocks (memory linear in N_p).

Pairwise uncertainty U_ij, the variance over the T scorings of p^k_i - p^k_j, equals the squared
distance |x_i - x_j|^2 between the points x_i = (p^k_i - mean_k p^k_i)_k / sqrt(T), so no
T x N_p x N_p tensor is ever formed.

Sinkhorn parametrisation: the kernel K = exp(-U / lambda) with a zero diagonal is given to ott-jax
as the cost C = U / lambda with epsilon = 1 (absolute) and a diagonal cost 1000 above the largest
entry, so exp(-C_ii) is exactly 0 in float32 and float64. Invalid answers get zero marginal
weight (uniform marginals 1/n over the n valid ones), so their rows and columns of the plan are
zero. In log-domain Sinkhorn the plan is W = exp(f_i + g_j - C_ij), hence log u = f, log v = g.
"""

import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from radi_jax.losses import common

STRATEGIES = ("ot", "uniform", "random", "uncertainty")
# Added to the largest cost on the diagonal: exp(-1000) is 0 even in float64.
_DIAGONAL_COST_GAP = 1000.0
# 1/U weights use 1/(U + floor) with floor = this times the mean uncertainty, so two answers with
# identical MC-dropout scorings do not get an infinite weight.
_UNCERTAINTY_FLOOR = 1e-6

TeacherWeights = dict[str, jax.Array]


def teacher_top_answers(teacher_logits: jax.Array, answer_mask: jax.Array,
                        num_top: int) -> tuple[jax.Array, jax.Array]:
  """The teacher's top N_p answers (Algorithm 1, truncation step).

  Args:
    teacher_logits: `[batch, answers]` teacher scores `t`.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    num_top: N_p (paper: 2500); P = min(num_top, answers).

  Returns:
    `top_indices [batch, P]` sorted by teacher score, highest first, and `top_valid
    [batch, P]`, False where fewer than P answers are valid.
  """
  chex.assert_rank(teacher_logits, 2)
  mask = jnp.broadcast_to(answer_mask, teacher_logits.shape)
  scores = jnp.where(mask, jax.lax.stop_gradient(teacher_logits), common.lowest(teacher_logits.dtype))
  _, top_indices = jax.lax.top_k(scores, min(num_top, scores.shape[-1]))
  return top_indices, jnp.take_along_axis(mask, top_indices, axis=-1)


def uncertainty_points(mc_scores_top: jax.Array) -> jax.Array:
  """Points whose squared distances are the pairwise uncertainties (Eq. 4).

  Args:
    mc_scores_top: `[batch, T, P]` MC-dropout teacher scorings `p^k` of the top answers.

  Returns:
    `[batch, P, T]` points `x_i = (p^k_i - mean_k p^k_i)_k / sqrt(T)`.
  """
  chex.assert_rank(mc_scores_top, 3)
  num_samples = mc_scores_top.shape[1]
  centred = mc_scores_top - jnp.mean(mc_scores_top, axis=1, keepdims=True)
  return jnp.swapaxes(centred, 1, 2) / math.sqrt(num_samples)


def _squared_distances(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """`[batch, R, T] x [batch, P, T] -> [batch, R, P]` squared Euclidean distances."""
  cross = jnp.einsum("brt,bpt->brp", rows, cols, precision=jax.lax.Precision.HIGHEST)
  squared = (jnp.sum(rows * rows, -1)[:, :, None] + jnp.sum(cols * cols, -1)[:, None, :] - 2.0 * cross)
  return jnp.maximum(squared, 0.0)


def pairwise_uncertainty(points: jax.Array) -> jax.Array:
  """Dense pairwise uncertainty U (Eq. 4); for tests and small N_p.

  Args:
    points: `[batch, P, T]` from `uncertainty_points`.

  Returns:
    `[batch, P, P]` with U_ij = var_k(p^k_i - p^k_j) = |x_i - x_j|^2.
  """
  return _squared_distances(points, points)


def _mean_uncertainty(points: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of U over valid pairs i != j, in O(P T): sum_{i!=j} |x_i-x_j|^2 = 2n sum|x|^2 - 2|sum x|^2."""
  x = jnp.where(valid[..., None], points, 0.0)
  n = jnp.sum(valid, -1).astype(points.dtype)
  total = 2.0 * n * jnp.sum(x * x, (-1, -2)) - 2.0 * jnp.sum(jnp.sum(x, -2) ** 2, -1)
  return common.safe_divide(jnp.maximum(total, 0.0), n * (n - 1.0))


def _sinkhorn_one(points: jax.Array, valid: jax.Array, lam: jax.Array, *, threshold: float,
                  max_iterations: int, inner_iterations: int) -> dict[str, jax.Array]:
  """Entropic OT with uniform marginals on one example's kernel exp(-U/lambda), zero diagonal."""
  num_top = points.shape[0]
  n = jnp.sum(valid)
  cost = _squared_distances(points[None], points[None])[0] / lam
  pair_valid = valid[:, None] & valid[None, :]
  # With fewer than two valid answers there is no pair: a zero diagonal cost lets the
  # (trivial) problem converge at once instead of fighting an all-zero kernel.
  diagonal = jnp.where(n >= 2, jnp.max(jnp.where(pair_valid, cost, 0.0)) + _DIAGONAL_COST_GAP, 0.0)
  cost = jnp.where(jnp.eye(num_top, dtype=bool), diagonal, cost)
  marginal = valid.astype(points.dtype) / jnp.maximum(n, 1).astype(points.dtype)
  geom = geometry.Geometry(cost_matrix=cost, epsilon=1.0)
  solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations,
                             inner_iterations=inner_iterations, implicit_diff=None)
  out = solver(linear_problem.LinearProblem(geom, a=marginal, b=marginal))
  log_u = jnp.where(valid, out.f, 0.0)
  log_v = jnp.where(valid, out.g, 0.0)
  plan = jnp.where(pair_valid & ~jnp.eye(num_top, dtype=bool),
                   jnp.exp(log_u[:, None] + log_v[None, :] - cost), 0.0)
  n_float = n.astype(points.dtype)
  weight_mean = common.safe_divide(jnp.sum(plan), n_float * (n_float - 1.0))
  last_check = jnp.maximum(out.n_iters // inner_iterations - 1, 0)
  return {
      "log_u": log_u,
      "log_v": log_v,
      "weight_mean": weight_mean,
      "sinkhorn_converged": jnp.asarray(out.converged),
      "sinkhorn_iterations": jnp.asarray(out.n_iters, jnp.int32),
      "sinkhorn_error": out.errors[last_check].astype(points.dtype),
  }


@functools.partial(jax.jit, static_argnames=("threshold", "max_iterations", "inner_iterations",
                                             "sinkhorn_batch_size"))
def _solve_sinkhorn(points, top_valid, lam, *, threshold, max_iterations, inner_iterations,
                    sinkhorn_batch_size):
  """`_sinkhorn_one` over the batch, `sinkhorn_batch_size` examples at a time (None: all)."""
  def solve(args):
    return _sinkhorn_one(*args, threshold=threshold, max_iterations=max_iterations,
                         inner_iterations=inner_iterations)

  if sinkhorn_batch_size is None:
    return jax.vmap(solve)((points, top_valid, lam))
  return jax.lax.map(solve, (points, top_valid, lam), batch_size=sinkhorn_batch_size)


def teacher_pair_weights(points: jax.Array,
                         top_valid: jax.Array,
                         *,
                         strategy: str = "ot",
                         lam_rel: float = 1.0,
                         threshold: float = 1e-4,
                         max_iterations: int = 2000,
                         inner_iterations: int = 10,
                         sinkhorn_batch_size: int | None = None) -> TeacherWeights:
  """Teacher-side numbers of RADI-P, computed once per example (Algorithm 1, steps 2-4).

  For `ot` the kernel K = exp(-U / lambda), lambda = lam_rel * mean_{i != j} U_ij, with a zero
  diagonal and uniform marginals is balanced by Sinkhorn (ott-jax) into the plan
  W = diag(u) K diag(v). The other strategies are the ablations of Table 3: `uniform` (W = 1),
  `random` (W ~ U[0, 1], drawn in the loss) and `uncertainty` (W = 1 / U).

  Args:
    points: `[batch, P, T]` from `uncertainty_points`.
    top_valid: `[batch, P]` boolean.
    strategy: one of `STRATEGIES`.
    lam_rel: lambda relative to the mean uncertainty.
    threshold: Sinkhorn stopping threshold on the L1 marginal error (marginals sum to 1).
    max_iterations: Sinkhorn iteration cap.
    inner_iterations: Sinkhorn iterations between two error checks.
    sinkhorn_batch_size: examples solved at once (memory `sinkhorn_batch_size * P^2`);
      None solves the whole batch at once.

  Returns:
    A dict of per-example arrays (leading dim `batch`) to cache and pass to
    `pairwise_ranking_loss`: `log_u`, `log_v` `[batch, P]` (0 unless `ot`), `lam`,
    `mean_uncertainty`, `weight_mean` (mean over valid i != j of the un-normalised weight;
    1/2, its expectation, for `random`, whose loss normalises by the drawn weights instead), and
    diagnostics `sinkhorn_converged`, `sinkhorn_iterations`, `sinkhorn_error` `[batch]`.
  """
  common.check_choice("strategy", strategy, STRATEGIES)
  chex.assert_rank(points, 3)
  chex.assert_shape(top_valid, points.shape[:2])
  points = jax.lax.stop_gradient(points)
  batch, num_top, _ = points.shape
  dtype = points.dtype
  mean_uncertainty = _mean_uncertainty(points, top_valid)
  # All scorings equal (no dropout) gives U = 0: any positive lambda then yields a flat kernel.
  lam = jnp.where(mean_uncertainty > 0, lam_rel * mean_uncertainty, 1.0)
  out = {
      "log_u": jnp.zeros((batch, num_top), dtype),
      "log_v": jnp.zeros((batch, num_top), dtype),
      "lam": lam,
      "mean_uncertainty": mean_uncertainty,
      "weight_mean": jnp.ones((batch,), dtype),
      "sinkhorn_converged": jnp.ones((batch,), bool),
      "sinkhorn_iterations": jnp.zeros((batch,), jnp.int32),
      "sinkhorn_error": jnp.zeros((batch,), dtype),
  }
  if strategy == "ot":
    out.update(_solve_sinkhorn(points, top_valid, lam, threshold=threshold,
                               max_iterations=max_iterations, inner_iterations=inner_iterations,
                               sinkhorn_batch_size=sinkhorn_batch_size))
  elif strategy == "random":
    out["weight_mean"] = jnp.full((batch,), 0.5, dtype)
  elif strategy == "uncertainty":
    sums, counts = _blocked_pair_sums(
        lambda rows: _pair_weights(rows, _columns(points, top_valid, out), strategy, None),
        _rows(points, top_valid, out), num_top, block_size=min(num_top, 256))
    out["weight_mean"] = common.safe_divide(sums, counts)
  return jax.lax.stop_gradient(out)


def _columns(points, valid, teacher_weights, student=None, teacher=None) -> dict[str, Any]:
  cols = {"points": points, "valid": valid, "log_v": teacher_weights["log_v"],
          "lam": teacher_weights["lam"], "mean_uncertainty": teacher_weights["mean_uncertainty"]}
  if student is not None:
    cols.update(student=student, teacher=teacher)
  return cols


def _rows(points, valid, teacher_weights, student=None, teacher=None) -> dict[str, Any]:
  rows = {"points": points, "valid": valid, "log_u": teacher_weights["log_u"],
          "index": jnp.broadcast_to(jnp.arange(points.shape[1]), valid.shape)}
  if student is not None:
    rows.update(student=student, teacher=teacher)
  return rows


def _pair_weights(rows: dict[str, jax.Array], cols: dict[str, Any], strategy: str,
                  rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Un-normalised weights W for a block of rows: `[batch, R, P]`, 0 off valid i != j pairs.

  Returns:
    `(weights, pair_valid)`, both `[batch, R, P]`.
  """
  num_top = cols["valid"].shape[-1]
  # Column blocks carry their own answer positions; full columns are positions 0..P-1.
  col_index = cols["index"][:, None, :] if "index" in cols else jnp.arange(num_top)[None, None, :]
  pair_valid = (rows["valid"][:, :, None] & cols["valid"][:, None, :]
                & (rows["index"][:, :, None] != col_index))
  if strategy == "uniform":
    weights = jnp.ones(pair_valid.shape, cols["points"].dtype)
  elif strategy == "random":
    # One key per (example, row index), so dense and blocked evaluation draw the same weights.
    def row_weights(key, row_index):
      return jax.random.uniform(jax.random.fold_in(key, row_index), (num_top,), cols["points"].dtype)
    keys = common.example_keys(rng, pair_valid.shape[0])
    weights = jax.vmap(jax.vmap(row_weights, (None, 0)))(keys, rows["index"])
  else:
    uncertainty = _squared_distances(rows["points"], cols["points"])
    if strategy == "uncertainty":
      floor = _UNCERTAINTY_FLOOR * cols["mean_uncertainty"][:, None, None]
      floor = jnp.where(floor > 0, floor, 1.0)
      weights = 1.0 / (uncertainty + floor)
    else:
      exponent = (rows["log_u"][:, :, None] + cols["log_v"][:, None, :]
                  - uncertainty / cols["lam"][:, None, None])
      weights = jnp.exp(jnp.where(pair_valid, exponent, 0.0))
  return jnp.where(pair_valid, weights, 0.0), pair_valid


def _split_rows(rows: dict[str, jax.Array], num_top: int, block_size: int) -> dict[str, jax.Array]:
  """`[batch, P, ...]` -> `[blocks, batch, block_size, ...]`; padded rows are invalid."""
  num_blocks = -(-num_top // block_size)
  pad = num_blocks * block_size - num_top

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape((x.shape[0], num_blocks, block_size) + x.shape[2:]), 0, 1)

  return jax.tree.map(split, rows)


def _blocked_pair_sums(block_fn, rows: dict[str, jax.Array], num_top: int,
                       block_size: int | None) -> tuple[jax.Array, jax.Array]:
  """Sums `block_fn(row block) -> (values [batch, R, P], counted [batch, R, P])` over rows.

  With `block_size` None the whole `[batch, P, P]` is one block; otherwise rows are processed
  `block_size` at a time under `jax.checkpoint`, so forward and backward memory stay
  O(batch * block_size * P).

  Returns:
    `([batch] sum of values, [batch] number of counted entries)`.
  """
  def reduce(block):
    values, counted = block_fn(block)
    return jnp.sum(values, (1, 2)), jnp.sum(counted, (1, 2)).astype(values.dtype)

  if block_size is None or block_size >= num_top:
    return reduce(rows)
  sums, counts = jax.lax.map(jax.checkpoint(reduce), _split_rows(rows, num_top, block_size))
  return jnp.sum(sums, 0), jnp.sum(counts, 0)


def _hinge_terms(block, cols, strategy, rng, weight_mean, margin):
  """Hinge slack `M_ij - (z_i - z_j)` and the teacher-ordered mask for a row block."""
  weights, _ = _pair_weights(block, cols, strategy, rng)
  ordered = (block["valid"][:, :, None] & cols["valid"][:, None, :]
             & (block["teacher"][:, :, None] > cols["teacher"][:, None, :]))
  margins = margin * weights / weight_mean[:, None, None]
  slack = margins - (block["student"][:, :, None] - cols["student"][:, None, :])
  return slack, ordered


def _fused_hinge_and_gradient(rows, cols, strategy, rng, weight_mean, margin, num_top, block_size):
  """One pass over row blocks giving the hinge sum, the pair count and d(sum)/dz `[batch, P]`.

  The hinge's gradient is a count of active pairs (-1 per active pair on z_i, +1 on z_j), so it
  is accumulated alongside the value: no second (backward) pass and no saved activations.
  """
  batch = cols["student"].shape[0]
  dtype = cols["student"].dtype

  def step(carry, block):
    sums, counts, column_gradient = carry
    slack, ordered = _hinge_terms(block, cols, strategy, rng, weight_mean, margin)
    active = ordered & (slack > 0)
    sums = sums + jnp.sum(jnp.where(active, slack, 0.0), (1, 2))
    counts = counts + jnp.sum(ordered, (1, 2)).astype(dtype)
    column_gradient = column_gradient + jnp.sum(active, 1).astype(dtype)
    return (sums, counts, column_gradient), -jnp.sum(active, 2).astype(dtype)

  init = (jnp.zeros((batch,), dtype), jnp.zeros((batch,), dtype), jnp.zeros((batch, num_top), dtype))
  (sums, counts, column_gradient), row_gradient = jax.lax.scan(
      step, init, _split_rows(rows, num_top, block_size))
  row_gradient = jnp.swapaxes(row_gradient, 0, 1).reshape(batch, -1)[:, :num_top]
  return sums, counts, row_gradient + column_gradient


def _fused_triangular_hinge(rows, cols, strategy, weight_mean, margin, num_top, block_size):
  """`_fused_hinge_and_gradient` for answers sorted by teacher score: upper-triangle blocks only.

  With the teacher's scores non-increasing along P, a pair (i, j) can be teacher-ordered
  (t_i > t_j) only when j > i, so the blocks below the diagonal hold no counted pair and are
  skipped: about half the work. Returns the same (sums, counts, gradient) as the full pass.
  """
  batch = cols["student"].shape[0]
  dtype = cols["student"].dtype
  num_blocks = -(-num_top // block_size)
  size = num_blocks * block_size
  per_answer = ("points", "valid", "student", "teacher", "index")
  cols = dict(cols, index=rows["index"])
  # Padded answers are invalid (False), so they form no pair.
  pad = lambda x: jnp.pad(x, [(0, 0), (0, size - num_top)] + [(0, 0)] * (x.ndim - 2))
  padded_rows = {k: pad(rows[k]) for k in per_answer + ("log_u",)}
  padded_cols = {k: pad(cols[k]) for k in per_answer + ("log_v",)}
  pairs = np.array([(r, c) for r in range(num_blocks) for c in range(r, num_blocks)], np.int32)

  def take(tree, block):
    return {k: jax.lax.dynamic_slice_in_dim(v, block * block_size, block_size, axis=1)
            for k, v in tree.items()}

  def step(carry, pair):
    sums, counts, gradient = carry
    col_block = dict(take(padded_cols, pair[1]), lam=cols["lam"],
                     mean_uncertainty=cols["mean_uncertainty"])
    slack, ordered = _hinge_terms(take(padded_rows, pair[0]), col_block, strategy, None,
                                  weight_mean, margin)
    active = ordered & (slack > 0)
    sums = sums + jnp.sum(jnp.where(active, slack, 0.0), (1, 2))
    counts = counts + jnp.sum(ordered, (1, 2)).astype(dtype)
    gradient = _add_block(gradient, -jnp.sum(active, 2).astype(dtype), pair[0], block_size)
    gradient = _add_block(gradient, jnp.sum(active, 1).astype(dtype), pair[1], block_size)
    return (sums, counts, gradient), None

  init = (jnp.zeros((batch,), dtype), jnp.zeros((batch,), dtype), jnp.zeros((batch, size), dtype))
  (sums, counts, gradient), _ = jax.lax.scan(step, init, pairs)
  return sums, counts, gradient[:, :num_top]


def _add_block(gradient, values, block, block_size):
  start = block * block_size
  current = jax.lax.dynamic_slice_in_dim(gradient, start, block_size, axis=1)
  return jax.lax.dynamic_update_slice_in_dim(gradient, current + values, start, axis=1)


def pairwise_ranking_loss(student_top: jax.Array,
                          teacher_top: jax.Array,
                          points: jax.Array,
                          top_valid: jax.Array,
                          teacher_weights: TeacherWeights,
                          *,
                          margin: float = 1.0,
                          strategy: str = "ot",
                          block_size: int | None = None,
                          rng: jax.Array | None = None,
                          teacher_sorted: bool = False) -> jax.Array:
  """Soft-margin pairwise ranking distillation loss (RADI paper, Eq. 5).

  For each pair of valid top answers with t_i > t_j the student pays
  `max(0, M_ij - (z_i - z_j))` with the margin M_ij = m * W_ij / mean_{i != j}(W); the loss is
  the mean over those pairs.

  Args:
    student_top: `[batch, P]` student scores z of the teacher's top answers.
    teacher_top: `[batch, P]` teacher scores t of the same answers.
    points: `[batch, P, T]` from `uncertainty_points`.
    top_valid: `[batch, P]` boolean.
    teacher_weights: the dict from `teacher_pair_weights` (computed with the same strategy).
    margin: m, the mean margin (paper: 0.1, 1 or 10).
    strategy: one of `STRATEGIES`.
    block_size: None evaluates all P x P pairs at once and differentiates by autodiff; an int
      scans `block_size` rows at a time and accumulates the (piecewise constant) gradient in the
      same pass, so one call costs one pass over the pairs and O(batch * block_size * P) memory.
      The blocked loss has the same value and first derivative as the dense one; its second
      derivative is 0 (as the hinge's is almost everywhere).
    rng: key for the `random` strategy, or one key per example (then the draws do not depend on
      how examples are batched).
    teacher_sorted: the answers are in non-increasing teacher-score order (as `teacher_top_answers`
      returns them); the blocked pass then skips the blocks below the diagonal, which hold no
      teacher-ordered pair (not for `random`).

  Returns:
    `[batch]` per-example losses; 0 for an example without a teacher-ordered pair.
  """
  common.check_choice("strategy", strategy, STRATEGIES)
  if strategy == "random" and rng is None:
    raise common.LossConfigError("strategy='random' needs rng (a jax.random key); got None")
  chex.assert_rank([student_top, teacher_top, points], [2, 2, 3])
  chex.assert_equal_shape([student_top, teacher_top, top_valid])
  num_top = student_top.shape[1]
  teacher_top = jax.lax.stop_gradient(teacher_top)
  points = jax.lax.stop_gradient(points)
  teacher_weights = jax.lax.stop_gradient(teacher_weights)
  cols = _columns(points, top_valid, teacher_weights, student_top, teacher_top)
  rows = _rows(points, top_valid, teacher_weights, student_top, teacher_top)

  if strategy == "random":
    sums, counts = _blocked_pair_sums(
        lambda block: _pair_weights(block, cols, strategy, rng), rows, num_top, block_size)
    weight_mean = common.safe_divide(sums, counts)
  else:
    weight_mean = teacher_weights["weight_mean"]
  weight_mean = jnp.where(weight_mean > 0, weight_mean, 1.0)

  if block_size is None or block_size >= num_top:
    # Dense reference: plain autodiff through the P x P hinge.
    def hinge(block):
      slack, ordered = _hinge_terms(block, cols, strategy, rng, weight_mean, margin)
      return jnp.where(ordered, jax.nn.relu(slack), 0.0), ordered

    sums, counts = _blocked_pair_sums(hinge, rows, num_top, None)
    return common.safe_divide(sums, counts)

  fixed_student = jax.lax.stop_gradient(student_top)
  rows["student"], cols["student"] = fixed_student, fixed_student
  if teacher_sorted and strategy != "random":
    sums, counts, gradient = _fused_triangular_hinge(rows, cols, strategy, weight_mean, margin,
                                                     num_top, block_size)
  else:
    sums, counts, gradient = _fused_hinge_and_gradient(rows, cols, strategy, rng, weight_mean,
                                                       margin, num_top, block_size)
  loss = common.safe_divide(sums, counts)
  gradient = common.safe_divide(gradient, counts[:, None])
  # Value from the fused pass (the added term is exactly 0); gradient d loss / dz attached to z.
  return loss + jnp.sum(gradient * (student_top - fixed_student), -1)


def pair_margins(points: jax.Array, top_valid: jax.Array, teacher_weights: TeacherWeights, *,
                 margin: float = 1.0, strategy: str = "ot", rng: jax.Array | None = None) -> jax.Array:
  """Dense margins M_ij = m W_ij / mean_{i != j}(W) (`[batch, P, P]`; for tests and plots).

  For `random` the normalisation uses the drawn weights, as `pairwise_ranking_loss` does.
  """
  common.check_choice("strategy", strategy, STRATEGIES)
  weights, _ = _pair_weights(_rows(points, top_valid, teacher_weights),
                          _columns(points, top_valid, teacher_weights), strategy, rng)
  if strategy == "random":
    n = jnp.sum(top_valid, -1).astype(points.dtype)
    weight_mean = common.safe_divide(jnp.sum(weights, (1, 2)), n * (n - 1))
  else:
    weight_mean = teacher_weights["weight_mean"]
  weight_mean = jnp.where(weight_mean > 0, weight_mean, 1.0)
  return margin * weights / weight_mean[:, None, None]


def radi_pairwise_loss(student_logits: jax.Array,
                       teacher_logits: jax.Array,
                       mc_scores: jax.Array,
                       answer_mask: jax.Array,
                       *,
                       num_top: int = 2500,
                       margin: float = 1.0,
                       lam_rel: float = 1.0,
                       strategy: str = "ot",
                       block_size: int | None = None,
                       rng: jax.Array | None = None,
                       **sinkhorn_options: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RADI-P end to end (Algorithm 1 + Eq. 5) when teacher numbers are not cached.

  Args:
    student_logits: `[batch, answers]`.
    teacher_logits: `[batch, answers]` (eval-mode teacher).
    mc_scores: `[batch, T, answers]` MC-dropout teacher scorings.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    num_top, margin, lam_rel, strategy, block_size, rng: as in the functions above.
    **sinkhorn_options: passed to `teacher_pair_weights` (threshold, max_iterations, ...).

  Returns:
    `[batch]` losses and a dict of `[batch]` diagnostics (`sinkhorn_converged`,
    `sinkhorn_iterations`, `sinkhorn_error`, `lam`).
  """
  chex.assert_rank(mc_scores, 3)
  top_indices, top_valid = teacher_top_answers(teacher_logits, answer_mask, num_top)
  student_top = jnp.take_along_axis(student_logits, top_indices, axis=-1)
  teacher_top = jnp.take_along_axis(jax.lax.stop_gradient(teacher_logits), top_indices, axis=-1)
  mc_top = jnp.take_along_axis(jax.lax.stop_gradient(mc_scores), top_indices[:, None, :], axis=-1)
  points = uncertainty_points(mc_top)
  weights = teacher_pair_weights(points, top_valid, strategy=strategy, lam_rel=lam_rel,
                                 **sinkhorn_options)
  loss = pairwise_ranking_loss(student_top, teacher_top, points, top_valid, weights, margin=margin,
                               strategy=strategy, block_size=block_size, rng=rng)
  aux = {k: weights[k] for k in ("sinkhorn_converged", "sinkhorn_iterations", "sinkhorn_error", "lam")}
  return loss, aux
