"""RADI-P (Eq. 4-5, Algorithm 1) against slow NumPy references written here."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radi_jax.losses import common
from radi_jax.losses import pairwise


def _random_problem(seed, batch=3, answers=9, samples=4):
  rng = np.random.RandomState(seed)
  teacher = rng.randn(batch, answers)
  student = rng.randn(batch, answers)
  mc_scores = teacher[:, None, :] + 0.5 * rng.randn(batch, samples, answers)
  mask = rng.rand(batch, answers) > 0.3
  mask[:, :2] = True  # at least two valid answers per example
  return student, teacher, mc_scores, mask


def _numpy_sinkhorn(kernel, marginal, iterations=20000, tol=1e-13):
  """Algorithm 1: alternate row and column scaling of the kernel until the marginals hold."""
  u = np.ones_like(marginal)
  v = np.ones_like(marginal)
  for _ in range(iterations):
    u = np.divide(marginal, kernel @ v, out=np.zeros_like(marginal), where=marginal > 0)
    v = np.divide(marginal, kernel.T @ u, out=np.zeros_like(marginal), where=marginal > 0)
    plan = u[:, None] * kernel * v[None, :]
    if np.abs(plan.sum(1) - marginal).sum() < tol:
      break
  return u[:, None] * kernel * v[None, :]


def _numpy_uncertainty(mc_top):
  """U_ij = variance over the T scorings of p_i - p_j (explicit loops)."""
  samples, num = mc_top.shape
  u = np.zeros((num, num))
  for i in range(num):
    for j in range(num):
      diff = mc_top[:, i] - mc_top[:, j]
      u[i, j] = np.mean((diff - diff.mean()) ** 2)
  return u


def _numpy_ot_margins(mc_top, valid, lam_rel, margin):
  uncertainty = _numpy_uncertainty(mc_top)
  idx = np.flatnonzero(valid)
  n = len(idx)
  off = [(i, j) for i in idx for j in idx if i != j]
  lam = lam_rel * np.mean([uncertainty[i, j] for i, j in off])
  kernel = np.exp(-uncertainty / lam)
  np.fill_diagonal(kernel, 0.0)
  kernel[~valid] = 0.0
  kernel[:, ~valid] = 0.0
  plan = _numpy_sinkhorn(kernel, valid / n)
  mean_weight = np.mean([plan[i, j] for i, j in off])
  return margin * plan / mean_weight


def _numpy_hinge(student, teacher, margins, valid):
  """Mean hinge over teacher-ordered pairs, and its gradient with respect to the student."""
  total, count = 0.0, 0
  grad = np.zeros(len(student))
  for i, j in itertools.product(range(len(student)), repeat=2):
    if valid[i] and valid[j] and teacher[i] > teacher[j]:
      slack = margins[i, j] - (student[i] - student[j])
      total += max(0.0, slack)
      count += 1
      if slack > 0:
        grad[i] -= 1.0
        grad[j] += 1.0
  return total / max(count, 1), grad / max(count, 1)


def test_teacher_top_answers_sorted_and_masked():
  _, teacher, _, mask = _random_problem(0, answers=7)
  mask[1, 3:] = False  # only three valid answers: the last two of five must be invalid
  idx, valid = pairwise.teacher_top_answers(jnp.asarray(teacher), jnp.asarray(mask), num_top=5)
  for b in range(teacher.shape[0]):
    order = [a for a in np.argsort(-teacher[b]) if mask[b, a]]
    expected = (order + [None] * 5)[:5]
    for p in range(5):
      assert bool(valid[b, p]) == (expected[p] is not None)
      if expected[p] is not None:
        assert int(idx[b, p]) == expected[p]
  assert pairwise.teacher_top_answers(jnp.asarray(teacher), jnp.asarray(mask), 100)[0].shape == (3, 7)


def test_squared_distance_uncertainty_equals_variance_of_differences():
  with jax.enable_x64(True):
    _, _, mc_scores, _ = _random_problem(1)
    points = pairwise.uncertainty_points(jnp.asarray(mc_scores))
    dense = np.asarray(pairwise.pairwise_uncertainty(points))
    for b in range(mc_scores.shape[0]):
      np.testing.assert_allclose(dense[b], _numpy_uncertainty(mc_scores[b]), atol=1e-10)


def test_sinkhorn_margins_match_numpy_sinkhorn():
  with jax.enable_x64(True):
    _, teacher, mc_scores, mask = _random_problem(2)
    for lam_rel in (0.5, 2.0):
      points = pairwise.uncertainty_points(jnp.asarray(mc_scores))
      weights = pairwise.teacher_pair_weights(points, jnp.asarray(mask), strategy="ot",
                                              lam_rel=lam_rel, threshold=1e-12,
                                              max_iterations=20000)
      assert bool(jnp.all(weights["sinkhorn_converged"]))
      margins = np.asarray(pairwise.pair_margins(points, jnp.asarray(mask), weights, margin=2.0))
      for b in range(teacher.shape[0]):
        expected = _numpy_ot_margins(mc_scores[b], mask[b], lam_rel, margin=2.0)
        np.testing.assert_allclose(margins[b], expected, atol=1e-4)
        np.testing.assert_allclose(margins[b], expected, atol=1e-8)  # float64: far tighter


def test_sinkhorn_batched_in_chunks_is_the_same():
  _, _, mc_scores, mask = _random_problem(3, batch=4)
  points = pairwise.uncertainty_points(jnp.asarray(mc_scores, jnp.float32))
  whole = pairwise.teacher_pair_weights(points, jnp.asarray(mask))
  chunked = pairwise.teacher_pair_weights(points, jnp.asarray(mask), sinkhorn_batch_size=2)
  for key in ("log_u", "log_v", "weight_mean"):
    np.testing.assert_allclose(whole[key], chunked[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", pairwise.STRATEGIES)
def test_pairwise_loss_matches_numpy_loops(strategy):
  with jax.enable_x64(True):
    student, teacher, mc_scores, mask = _random_problem(4)
    key = jax.random.key(7)
    points = pairwise.uncertainty_points(jnp.asarray(mc_scores))
    weights = pairwise.teacher_pair_weights(points, jnp.asarray(mask), strategy=strategy,
                                            lam_rel=1.0, threshold=1e-12, max_iterations=20000)
    args = (jnp.asarray(teacher), points, jnp.asarray(mask), weights)

    def loss_and_grad(block_size):
      def total(s):
        loss = pairwise.pairwise_ranking_loss(s, *args, margin=0.7, strategy=strategy, rng=key,
                                              block_size=block_size)
        return jnp.sum(loss), loss
      return jax.jit(jax.grad(total, has_aux=True))(jnp.asarray(student))

    dense_grad, dense = loss_and_grad(None)
    blocked_grad, blocked = loss_and_grad(4)
    np.testing.assert_allclose(dense, blocked, atol=1e-12)
    np.testing.assert_allclose(dense_grad, blocked_grad, atol=1e-12)
    if strategy == "random":
      # The weights are jax.random draws; rebuild them through the dense margins.
      margins_fn = jax.jit(pairwise.pair_margins, static_argnames=("margin", "strategy"))
      margin_sets = np.asarray(margins_fn(points, jnp.asarray(mask), weights, margin=0.7,
                                          strategy="random", rng=key))
    for b in range(student.shape[0]):
      valid = mask[b]
      idx = np.flatnonzero(valid)
      off = [(i, j) for i in idx for j in idx if i != j]
      uncertainty = _numpy_uncertainty(mc_scores[b])
      if strategy == "ot":
        margins = _numpy_ot_margins(mc_scores[b], valid, 1.0, 0.7)
      elif strategy == "uniform":
        margins = np.full(uncertainty.shape, 0.7)
      elif strategy == "uncertainty":
        inverse = 1.0 / (uncertainty + 1e-6 * np.mean([uncertainty[i, j] for i, j in off]))
        margins = 0.7 * inverse / np.mean([inverse[i, j] for i, j in off])
      else:
        margins = margin_sets[b]
        draws = margins[valid][:, valid][~np.eye(len(idx), dtype=bool)]
        assert np.all(draws >= 0) and abs(draws.mean() - 0.7) < 1e-12
      expected, expected_grad = _numpy_hinge(student[b], teacher[b], margins, valid)
      np.testing.assert_allclose(dense[b], expected, atol=1e-6)
      np.testing.assert_allclose(dense_grad[b], expected_grad, atol=1e-12)


def test_pairwise_loss_zero_when_pairs_are_separated_by_their_margins():
  _, teacher, mc_scores, mask = _random_problem(5)
  points = pairwise.uncertainty_points(jnp.asarray(mc_scores, jnp.float32))
  weights = pairwise.teacher_pair_weights(points, jnp.asarray(mask))
  margins = np.asarray(pairwise.pair_margins(points, jnp.asarray(mask), weights, margin=1.0))
  # Student scores that follow the teacher order with gaps above every margin.
  student = np.zeros_like(teacher)
  for b in range(teacher.shape[0]):
    ranks = np.argsort(np.argsort(-teacher[b]))
    student[b] = -(margins[b].max() + 0.1) * ranks
  for block_size in (None, 4):
    loss, grad = jax.jit(jax.value_and_grad(lambda s: jnp.sum(pairwise.pairwise_ranking_loss(
        s, jnp.asarray(teacher, jnp.float32), points, jnp.asarray(mask), weights,
        block_size=block_size))))(jnp.asarray(student, jnp.float32))
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
  # Shrinking the gaps below the margins makes it positive again.
  loss = pairwise.pairwise_ranking_loss(jnp.asarray(student * 0.01, jnp.float32),
                                        jnp.asarray(teacher, jnp.float32), points,
                                        jnp.asarray(mask), weights)
  assert np.all(np.asarray(loss) > 0)


@pytest.mark.parametrize("strategy", pairwise.STRATEGIES)
def test_radi_pairwise_loss_jits_with_finite_gradients(strategy):
  student, teacher, mc_scores, mask = _random_problem(6, answers=12)
  mask[:, -3:] = False  # padded answers, with extreme scores to tempt overflow
  student[:, -3:] = 1e30
  teacher[:, -3:] = -1e30
  # A row whose MC scorings all agree: zero uncertainty for its pairs.
  mc_scores[0] = teacher[0][None, :]

  @jax.jit
  def loss_and_grad(student_logits):
    def total(s):
      loss, aux = pairwise.radi_pairwise_loss(s, jnp.asarray(teacher, jnp.float32),
                                              jnp.asarray(mc_scores, jnp.float32), jnp.asarray(mask),
                                              num_top=10, strategy=strategy, block_size=3,
                                              rng=jax.random.key(0))
      return jnp.sum(loss), (loss, aux)
    return jax.grad(total, has_aux=True)(student_logits)

  grads, (loss, aux) = loss_and_grad(jnp.asarray(student, jnp.float32))
  assert loss.shape == (3,)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grads))
  assert np.all(np.asarray(grads)[:, -3:] == 0)
  assert set(aux) == {"sinkhorn_converged", "sinkhorn_iterations", "sinkhorn_error", "lam"}


def test_unknown_strategy_is_one_clear_error():
  points = jnp.zeros((1, 3, 2))
  with pytest.raises(common.LossConfigError, match="strategy='sinkhorn'.*'ot'"):
    pairwise.teacher_pair_weights(points, jnp.ones((1, 3), bool), strategy="sinkhorn")


def test_random_strategy_with_per_example_keys_does_not_depend_on_batching():
  student, teacher, mc_scores, mask = _random_problem(8)
  points = pairwise.uncertainty_points(jnp.asarray(mc_scores, jnp.float32))
  weights = pairwise.teacher_pair_weights(points, jnp.asarray(mask), strategy="random")
  keys = jax.random.split(jax.random.PRNGKey(3), 3)  # raw keys work as well as typed ones
  args = (jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), points,
          jnp.asarray(mask), weights)
  loss_fn = jax.jit(pairwise.pairwise_ranking_loss, static_argnames=("strategy", "block_size"))
  whole = loss_fn(*args, strategy="random", rng=keys, block_size=4)
  for b in range(3):
    alone = loss_fn(*jax.tree.map(lambda x: x[b:b + 1], args), strategy="random",
                    rng=keys[b:b + 1])
    np.testing.assert_allclose(alone[0], whole[b], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["ot", "uniform", "uncertainty"])
def test_teacher_sorted_pass_skips_lower_blocks_and_matches_numpy_loops(strategy):
  with jax.enable_x64(True):
    student, teacher, mc_scores, mask = _random_problem(5, answers=11)
    # Answers in teacher order, as teacher_top_answers returns them (padded answers last).
    order = np.argsort(np.where(mask, -teacher, np.inf), axis=1, kind="stable")
    take = lambda x: np.take_along_axis(x, order, axis=1)
    student, teacher, mask = take(student), take(teacher), take(mask)
    mc_scores = np.take_along_axis(mc_scores, order[:, None, :], axis=2)
    points = pairwise.uncertainty_points(jnp.asarray(mc_scores))
    weights = pairwise.teacher_pair_weights(points, jnp.asarray(mask), strategy=strategy,
                                            lam_rel=1.0, threshold=1e-12, max_iterations=20000)

    def total(s):
      loss = pairwise.pairwise_ranking_loss(s, jnp.asarray(teacher), points, jnp.asarray(mask),
                                            weights, margin=0.7, strategy=strategy, block_size=4,
                                            teacher_sorted=True)
      return jnp.sum(loss), loss

    grad, loss = jax.jit(jax.grad(total, has_aux=True))(jnp.asarray(student))
    for b in range(student.shape[0]):
      valid = mask[b]
      idx = np.flatnonzero(valid)
      uncertainty = _numpy_uncertainty(mc_scores[b])
      off = [(i, j) for i in idx for j in idx if i != j]
      if strategy == "ot":
        margins = _numpy_ot_margins(mc_scores[b], valid, 1.0, 0.7)
      elif strategy == "uniform":
        margins = np.full(uncertainty.shape, 0.7)
      else:
        inverse = 1.0 / (uncertainty + 1e-6 * np.mean([uncertainty[i, j] for i, j in off]))
        margins = 0.7 * inverse / np.mean([inverse[i, j] for i, j in off])
      expected, expected_grad = _numpy_hinge(student[b], teacher[b], margins, valid)
      np.testing.assert_allclose(loss[b], expected, atol=1e-6)
      np.testing.assert_allclose(grad[b], expected_grad, atol=1e-12)
