"""RADI-L: partial listwise ranking distillation (RADI paper, Eq. 6-9).

The student follows the teacher's order on a partial list: the teacher's top `k_hot` answers
(hot list) plus `n_cold` answers drawn without replacement from the remaining ranks with a
rank-decaying probability (cold list). Every loss takes `(student [batch, K], teacher
[batch, K], valid [batch, K])` over that list and returns `[batch]`.
"""

import chex
import jax
import jax.numpy as jnp
import rax

from radi_jax.losses import common

SAMPLINGS = ("zipf", "exp", "random", "full")
LISTWISE_LOSSES = ("listmle", "listnet", "stlistnet", "lambda_ranknet", "lambda_ndcg1",
                   "lambda_ndcg2", "lambda_ndcg2pp")
LAMBDA_WEIGHTINGS = ("ranknet", "ndcg1", "ndcg2", "ndcg2pp")
# allRank's clamp for logs and divisions in LambdaLoss.
_LAMBDA_EPS = 1e-10


def cold_list_log_probabilities(num_ranks: int, *, sampling: str, decay: float) -> jax.Array:
  """Unnormalised log-probabilities of the cold-list ranks r = 1..num_ranks (Sec. 3.3).

  Args:
    num_ranks: how many ranks follow the hot list.
    sampling: `zipf` (p ∝ r^-a) or `exp` (p ∝ exp(-a r)); `random` gives uniform ranks.
    decay: a.

  Returns:
    `[num_ranks]` log-weights.
  """
  ranks = jnp.arange(1, num_ranks + 1, dtype=jnp.float32)
  if sampling == "zipf":
    return -decay * jnp.log(ranks)
  if sampling == "exp":
    return -decay * ranks
  return jnp.zeros_like(ranks)


def sample_partial_list(teacher_logits: jax.Array,
                        answer_mask: jax.Array,
                        rng: jax.Array,
                        *,
                        k_hot: int = 100,
                        n_cold: int = 10,
                        sampling: str = "zipf",
                        decay: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Hot list + cold list of answers to rank (RADI paper, Sec. 3.3).

  The hot list is the teacher's top `k_hot` answers. The cold list draws `n_cold` of the
  remaining valid answers without replacement (Gumbel-top-k on the log-probabilities), the
  answer at rank r after the hot list (r = 1, 2, ...) with probability ∝ r^-a (`zipf`) or
  exp(-a r) (`exp`). Ablations: `random` is a uniform sublist of the same size among all valid
  answers; `full` is every valid answer.

  Args:
    teacher_logits: `[batch, answers]`.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    rng: a `jax.random` key, or one key per example.
    k_hot: hot-list length.
    n_cold: cold-list length.
    sampling: one of `SAMPLINGS`.
    decay: a.

  Returns:
    `list_indices [batch, K]` (answer ids, in teacher order) and `list_valid [batch, K]`, with
    K = min(k_hot, answers) + min(n_cold, answers - k_hot) (K = answers for `full`).
  """
  common.check_choice("sampling", sampling, SAMPLINGS)
  chex.assert_rank(teacher_logits, 2)
  batch, num_answers = teacher_logits.shape
  mask = jnp.broadcast_to(answer_mask, teacher_logits.shape)
  scores = jnp.where(mask, jax.lax.stop_gradient(teacher_logits), common.lowest(teacher_logits.dtype))
  _, teacher_order = jax.lax.top_k(scores, num_answers)
  num_valid = jnp.sum(mask, axis=-1, keepdims=True)
  positions = jnp.broadcast_to(jnp.arange(num_answers), (batch, num_answers))
  position_valid = positions < num_valid
  num_hot = min(k_hot, num_answers)
  num_cold = max(min(n_cold, num_answers - num_hot), 0)

  if sampling == "full":
    chosen = positions
  else:
    if sampling == "random":
      first, size, log_probs = 0, num_hot + num_cold, jnp.zeros((num_answers,), jnp.float32)
    else:
      first, size = num_hot, num_cold
      log_probs = cold_list_log_probabilities(num_answers - num_hot, sampling=sampling, decay=decay)
    gumbel = jax.vmap(lambda key: jax.random.gumbel(key, (num_answers - first,), jnp.float32))(
        common.example_keys(rng, batch))
    keys = jnp.where(position_valid[:, first:], log_probs[None, :] + gumbel, -jnp.inf)
    _, drawn = jax.lax.top_k(keys, size)
    # Ascending positions keep the list in teacher order; invalid positions sort last.
    drawn = jnp.sort(drawn + first, axis=-1)
    chosen = drawn if sampling == "random" else jnp.concatenate([positions[:, :num_hot], drawn], -1)
  list_indices = jnp.take_along_axis(teacher_order, chosen, axis=-1)
  list_valid = jnp.take_along_axis(position_valid, chosen, axis=-1)
  return list_indices, list_valid


def _check_list(student, teacher, valid):
  chex.assert_rank(student, 2)
  chex.assert_equal_shape([student, teacher, valid])


def listmle(student: jax.Array, teacher: jax.Array, valid: jax.Array) -> jax.Array:
  """ListMLE (RADI paper, Eq. 6): negative log Plackett-Luce likelihood of the teacher order.

  `L = -sum_i log( exp(z_{π(i)}) / sum_{j >= i} exp(z_{π(j)}) )`, π = teacher order (via `rax`).

  Args:
    student: `[batch, K]` student scores on the list.
    teacher: `[batch, K]` teacher scores on the list.
    valid: `[batch, K]` boolean.

  Returns:
    `[batch]` losses (0 for an empty list).
  """
  _check_list(student, teacher, valid)
  teacher = jax.lax.stop_gradient(teacher)
  loss = rax.listmle_loss(jnp.where(valid, student, 0.0), jnp.where(valid, teacher, 0.0),
                          where=valid, reduce_fn=None)
  return jnp.where(jnp.any(valid, -1), loss, 0.0)


def listnet(student: jax.Array, teacher: jax.Array, valid: jax.Array, *,
            temperature: float = 1.0) -> jax.Array:
  """ListNet (RADI paper, Eq. 7): cross-entropy from softmax(t/τ) to softmax(z/τ).

  Args:
    student: `[batch, K]`.
    teacher: `[batch, K]`.
    valid: `[batch, K]` boolean.
    temperature: τ, applied to both score lists.

  Returns:
    `[batch]` losses.
  """
  _check_list(student, teacher, valid)
  target = common.masked_softmax(jax.lax.stop_gradient(teacher) / temperature, valid)
  # rax's softmax_loss takes the labels as given (no normalisation): pass probabilities.
  loss = rax.softmax_loss(jnp.where(valid, student / temperature, 0.0), target, where=valid,
                          reduce_fn=None)
  return jnp.where(jnp.any(valid, -1), loss, 0.0)


def stlistnet(student: jax.Array, teacher: jax.Array, valid: jax.Array, rng: jax.Array, *,
              beta: float = 1.0, temperature: float = 1.0) -> jax.Array:
  """Stochastic ListNet as the RADI paper writes it (Eq. 8).

  The target is softmax((t + β g)/τ) with Gumbel noise g on the *teacher* scores. Note that
  Bruch et al. (2020), who introduced stochastic treatment of ListNet, perturb the model's own
  scores instead; this follows the RADI paper.

  Args:
    student: `[batch, K]`.
    teacher: `[batch, K]`.
    valid: `[batch, K]` boolean.
    rng: key for the Gumbel noise, or one key per example.
    beta: noise scale β.
    temperature: τ.

  Returns:
    `[batch]` losses.
  """
  _check_list(student, teacher, valid)
  keys = common.example_keys(rng, teacher.shape[0])
  noise = jax.vmap(lambda key: jax.random.gumbel(key, teacher.shape[1:], teacher.dtype))(keys)
  return listnet(student, jax.lax.stop_gradient(teacher) + beta * noise, valid,
                 temperature=temperature)


def graded_relevance(teacher: jax.Array, valid: jax.Array) -> jax.Array:
  """Teacher softmax over the list divided by its maximum: in [0, 1], 1 for the top answer."""
  probs = common.masked_softmax(jax.lax.stop_gradient(teacher), valid)
  return common.safe_divide(probs, jnp.max(probs, -1, keepdims=True))


def lambda_loss(student: jax.Array, teacher: jax.Array, valid: jax.Array, *,
                weighting: str = "ndcg2pp", sigma: float = 1.0, mu: float = 10.0) -> jax.Array:
  """LambdaLoss (RADI paper, Eq. 9; Wang et al. 2018) with allRank's conventions.

  With the list sorted by the current student scores (positions i = 1..K), gains
  G_i = (2^{y_i} - 1) / maxDCG (maxDCG from the relevance sorted descending), discounts
  D_i = log2(1 + i):

    L = -sum_{(i, j)} log2( max(max(sigmoid(σ (z_i - z_j)), eps)^{w_ij}, eps) )

  over valid pairs with y_i > y_j (every valid pair, the diagonal included, for `ndcg1`), with
  weights, not differentiated: `ranknet` w = 1; `ndcg1` w = G_i / D_i; `ndcg2`
  w = |1/D(|i-j|) - 1/D(|i-j|+1)| |G_i - G_j|; `ndcg2pp` w = μ ndcg2 + |1/D_i - 1/D_j| |G_i - G_j|.
  The graded relevance y is the teacher softmax over the list divided by its maximum.

  Args:
    student: `[batch, K]`.
    teacher: `[batch, K]`.
    valid: `[batch, K]` boolean.
    weighting: one of `LAMBDA_WEIGHTINGS`.
    sigma: σ of the pairwise sigmoid.
    mu: μ of NDCG-Loss2++.

  Returns:
    `[batch]` losses (sum over pairs, as allRank reduces).
  """
  common.check_choice("weighting", weighting, LAMBDA_WEIGHTINGS)
  _check_list(student, teacher, valid)
  list_size = student.shape[-1]
  relevance = jnp.where(valid, graded_relevance(teacher, valid), 0.0)
  safe_student = jnp.where(valid, student, 0.0)
  sort_key = jnp.where(valid, -jax.lax.stop_gradient(safe_student), jnp.inf)
  by_student = jnp.argsort(sort_key, axis=-1, stable=True)
  scores = jnp.take_along_axis(safe_student, by_student, -1)
  gains_by_student = jnp.take_along_axis(relevance, by_student, -1)
  valid_by_student = jnp.take_along_axis(valid, by_student, -1)

  positions = jnp.arange(1, list_size + 1, dtype=student.dtype)
  discounts = jnp.log2(1.0 + positions)
  ideal = -jnp.sort(-relevance, axis=-1)
  max_dcg = jnp.maximum(jnp.sum((2.0 ** ideal - 1.0) / discounts, -1, keepdims=True), _LAMBDA_EPS)
  gains = (2.0 ** gains_by_student - 1.0) / max_dcg

  pair_valid = valid_by_student[:, :, None] & valid_by_student[:, None, :]
  if weighting != "ndcg1":
    pair_valid &= gains_by_student[:, :, None] > gains_by_student[:, None, :]

  gain_gaps = jnp.abs(gains[:, :, None] - gains[:, None, :])
  if weighting == "ranknet":
    weights = jnp.ones_like(gain_gaps)
  elif weighting == "ndcg1":
    weights = jnp.broadcast_to((gains / discounts)[:, :, None], gain_gaps.shape)
  else:
    offsets = jnp.abs(positions[:, None] - positions[None, :])
    deltas = jnp.abs(1.0 / jnp.log2(1.0 + jnp.maximum(offsets, 1.0)) - 1.0 / jnp.log2(2.0 + offsets))
    deltas = jnp.where(offsets == 0, 0.0, deltas)
    weights = deltas[None] * gain_gaps
    if weighting == "ndcg2pp":
      rank_weights = jnp.abs(1.0 / discounts[:, None] - 1.0 / discounts[None, :])[None] * gain_gaps
      weights = mu * weights + rank_weights
  weights = jax.lax.stop_gradient(weights)

  score_gaps = jnp.clip(scores[:, :, None] - scores[:, None, :], -1e8, 1e8)
  score_gaps = jnp.where(pair_valid, score_gaps, 0.0)
  probabilities = jnp.maximum(jnp.maximum(jax.nn.sigmoid(sigma * score_gaps), _LAMBDA_EPS) ** weights,
                              _LAMBDA_EPS)
  return -jnp.sum(jnp.where(pair_valid, jnp.log2(probabilities), 0.0), axis=(1, 2))


def radi_listwise_loss(student_logits: jax.Array,
                       teacher_logits: jax.Array,
                       answer_mask: jax.Array,
                       rng: jax.Array,
                       *,
                       k_hot: int = 100,
                       n_cold: int = 10,
                       sampling: str = "zipf",
                       decay: float = 1.0,
                       loss: str = "listmle",
                       beta: float = 1.0,
                       temperature: float = 1.0) -> jax.Array:
  """RADI-L end to end: sample the partial list, then a listwise loss on it (Eq. 6-9).

  Args:
    student_logits: `[batch, answers]`.
    teacher_logits: `[batch, answers]`.
    answer_mask: `[answers]` or `[batch, answers]` boolean.
    rng: key for the cold-list draw (and STListNet's noise), or one key per example.
    k_hot, n_cold, sampling, decay: see `sample_partial_list`.
    loss: one of `LISTWISE_LOSSES`.
    beta: STListNet noise scale.
    temperature: ListNet / STListNet temperature.

  Returns:
    `[batch]` per-example losses.
  """
  common.check_choice("loss", loss, LISTWISE_LOSSES)
  chex.assert_equal_shape([student_logits, teacher_logits])
  keys = jax.vmap(jax.random.split)(common.example_keys(rng, student_logits.shape[0]))
  sample_rng, noise_rng = keys[:, 0], keys[:, 1]
  indices, valid = sample_partial_list(teacher_logits, answer_mask, sample_rng, k_hot=k_hot,
                                       n_cold=n_cold, sampling=sampling, decay=decay)
  student = jnp.take_along_axis(student_logits, indices, -1)
  teacher = jnp.take_along_axis(jax.lax.stop_gradient(teacher_logits), indices, -1)
  if loss == "listmle":
    return listmle(student, teacher, valid)
  if loss == "listnet":
    return listnet(student, teacher, valid, temperature=temperature)
  if loss == "stlistnet":
    return stlistnet(student, teacher, valid, noise_rng, beta=beta, temperature=temperature)
  return lambda_loss(student, teacher, valid, weighting=loss.removeprefix("lambda_"))
