"""Pure train, eval and teacher-cache steps: where the model, the losses and a batch meet.

Every function here is a pure function of arrays, jitted once by `radi_jax.training.parallel`. A batch
is the dict of arrays the input pipeline yields (`radi_jax.data`), extended on the host with the
teacher-cache fields of its examples (`teacher_features`, and for RADI-P `top_indices`, `log_u`,
`log_v`, `lam`, `weight_mean`).

Loss normalisation is global: per-example losses are summed over the valid examples of the whole
global batch and divided by their count, so one device, eight devices and `pmap` agree.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from radi_jax import losses
from radi_jax import metrics as metrics_lib
from radi_jax.model import frozenbilm

PyTree = Any

RANK_LOSSES = ('none', 'radi_p', 'radi_l', 'kd', 'dkd', 'ctkd', 'fitnet', 'rkd')
# What the teacher cache stores per example for RADI-P (`pairwise_teacher_side`).
PAIRWISE_CACHE_FIELDS = ('top_indices', 'log_u', 'log_v', 'lam', 'mean_uncertainty', 'weight_mean')


@dataclasses.dataclass(frozen=True)
class LossSetup:
  """Static (hashable) description of a training objective: L = L_cls + alpha * L_rank."""

  rank_loss: str = 'none'
  alpha: float = 0.0
  label_smoothing: float = 0.0
  pseudo_labels_k: int = 0
  seed: int = 0  # Seeds the teacher's per-example MC-dropout masks (shared with the cache stage).
  mc_samples: int = 10
  mc_dropout_rate: float = 0.1
  num_top: int = 2500
  margin: float = 1.0
  lam_rel: float = 1.0
  pairwise_strategy: str = 'ot'
  block_size: int = 512
  k_hot: int = 100
  n_cold: int = 10
  sampling: str = 'zipf'
  decay: float = 1.0
  listwise_loss: str = 'listmle'
  beta: float = 1.0
  kd_temperature: float = 4.0
  dkd_alpha: float = 1.0
  dkd_beta: float = 8.0
  dkd_temperature: float = 4.0
  ctkd_min_temperature: float = 1.0
  ctkd_max_temperature: float = 21.0
  ctkd_lambda_max: float = 1.0
  ctkd_curriculum_steps: int = 1  # Set per run from its length (trainer.train_run).
  rkd_distance_weight: float = 25.0
  rkd_angle_weight: float = 50.0

  @property
  def needs_teacher(self) -> bool:
    return self.rank_loss != 'none' or self.pseudo_labels_k > 0


def loss_setup_from_config(config, rank_loss: str) -> LossSetup:
  """The static loss description of a student run (the teacher's is `LossSetup(seed=...)`)."""
  if rank_loss not in RANK_LOSSES:
    raise ValueError(f'student.losses: unknown loss {rank_loss!r}; expected one of {RANK_LOSSES}')
  return LossSetup(
      rank_loss=rank_loss,
      alpha=float(config[rank_loss].weight) if rank_loss != 'none' else 0.0,
      label_smoothing=float(config.student.label_smoothing),
      pseudo_labels_k=int(config.student.pseudo_labels_k),
      seed=int(config.seed),
      mc_samples=int(config.radi_p.mc_samples),
      mc_dropout_rate=float(config.model.mc_dropout_rate),
      num_top=int(config.radi_p.num_top),
      margin=float(config.radi_p.margin),
      lam_rel=float(config.radi_p.lam_rel),
      pairwise_strategy=str(config.radi_p.strategy),
      block_size=int(config.radi_p.block_size),
      k_hot=int(config.radi_l.k_hot),
      n_cold=int(config.radi_l.n_cold),
      sampling=str(config.radi_l.sampling),
      decay=float(config.radi_l.decay),
      listwise_loss=str(config.radi_l.loss),
      beta=float(config.radi_l.beta),
      kd_temperature=float(config.kd.temperature),
      dkd_alpha=float(config.dkd.alpha),
      dkd_beta=float(config.dkd.beta),
      dkd_temperature=float(config.dkd.temperature),
      ctkd_min_temperature=float(config.ctkd.min_temperature),
      ctkd_max_temperature=float(config.ctkd.max_temperature),
      ctkd_lambda_max=float(config.ctkd.lambda_max),
      rkd_distance_weight=float(config.rkd.distance_weight),
      rkd_angle_weight=float(config.rkd.angle_weight),
  )


@flax.struct.dataclass
class TrainState:
  """What a training checkpoint holds: only trainable parameters and their optimizer state."""

  step: jnp.ndarray
  rng: jnp.ndarray  # Raw PRNG key data [2] of the run: dropout and sampling keys fold in the step.
  params: PyTree  # {'model': trainable model leaves, 'aux': loss-owned parameters (CTKD, FitNet)}
  opt_state: PyTree


def init_train_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A host-side (numpy) train state at step 0."""
  return TrainState(step=np.zeros((), np.int32), rng=np.asarray(jax.random.PRNGKey(seed)),
                    params=params, opt_state=jax.device_get(tx.init(params)))


# ----------------------------------------------------------------------------- parameter partition


def split_params(params: PyTree, mask: PyTree) -> tuple[dict, dict]:
  """Splits a parameter tree into (trainable, frozen) nested dicts by a boolean mask tree."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  flat_mask = flax.traverse_util.flatten_dict(flax.core.unfreeze(mask))
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return (flax.traverse_util.unflatten_dict(trainable), flax.traverse_util.unflatten_dict(frozen))


def merge_params(trainable: dict, frozen: dict) -> dict:
  """Inverse of `split_params`."""
  flat = flax.traverse_util.flatten_dict(frozen)
  flat.update(flax.traverse_util.flatten_dict(trainable))
  return flax.traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------- teacher side


def teacher_scores(teacher_head: dict, features: jnp.ndarray) -> jnp.ndarray:
  """Teacher answer logits `[B, N]` from cached answer-head input vectors `[B, E]`."""
  return frozenbilm.answer_scores(features.astype(jnp.float32), teacher_head['embeddings'],
                                  teacher_head['bias'])


def example_keys(seed_key: jax.Array, index: jnp.ndarray) -> jax.Array:
  """One PRNG key per example, from a seed key and the stable example index `[B]`."""
  return jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(index.astype(jnp.uint32))


def teacher_mc_scores(setup: LossSetup, teacher_head: dict, features: jnp.ndarray,
                      index: jnp.ndarray) -> jnp.ndarray:
  """T MC-dropout teacher scorings `[B, T, N]`; masks depend only on (seed, example index)."""
  keys = example_keys(jax.random.fold_in(jax.random.PRNGKey(setup.seed), 7), index)
  return frozenbilm.mc_dropout_scores(features.astype(jnp.float32), teacher_head['embeddings'],
                                      teacher_head['bias'], keys, num_samples=setup.mc_samples,
                                      rate=setup.mc_dropout_rate)


def pairwise_teacher_side(setup: LossSetup, teacher_head: dict, features: jnp.ndarray,
                          index: jnp.ndarray, answer_mask: jnp.ndarray) -> dict:
  """RADI-P teacher side for the cache stage: top answers and the Sinkhorn scalings (Alg. 1)."""
  scores = teacher_scores(teacher_head, features)
  top_indices, top_valid = losses.teacher_top_answers(scores, answer_mask, setup.num_top)
  mc = teacher_mc_scores(setup, teacher_head, features, index)
  points = losses.uncertainty_points(jnp.take_along_axis(mc, top_indices[:, None, :], axis=2))
  # Eight examples' dense N_p x N_p kernels at a time bound the cache stage's memory.
  weights = losses.teacher_pair_weights(points, top_valid, strategy=setup.pairwise_strategy,
                                        lam_rel=setup.lam_rel, sinkhorn_batch_size=8)
  return dict(top_indices=top_indices.astype(jnp.int32), **weights)


# ----------------------------------------------------------------------------- losses


def _per_example_mask(answer_mask: jnp.ndarray, batch_size: int) -> jnp.ndarray:
  return jnp.broadcast_to(answer_mask, (batch_size, answer_mask.shape[-1]))


def loss_terms(setup: LossSetup, outputs: dict, batch: dict, teacher_head: dict | None,
               aux_params: dict, answer_mask: jnp.ndarray, step_key: jax.Array,
               step: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-example classification and ranking terms.

  Returns:
    (cls [B], rank [B]); batch-level ranking losses (RKD) are spread evenly over the valid examples so
    that the global mean is the batch-level value.
  """
  logits = outputs['logits']
  batch_size = logits.shape[0]
  targets = batch['targets']
  teacher = None
  if setup.needs_teacher:
    teacher = teacher_scores(teacher_head, batch['teacher_features'])
  if setup.pseudo_labels_k > 0:
    targets = losses.pseudo_label_targets(targets, teacher, answer_mask, k=setup.pseudo_labels_k)
  cls = losses.classification_loss(logits, targets, answer_mask,
                                   label_smoothing=setup.label_smoothing)

  name = setup.rank_loss
  keys = example_keys(step_key, batch['index'])
  if name == 'none':
    rank = jnp.zeros_like(cls)
  elif name == 'radi_p':
    top_indices = batch['top_indices']
    top_valid = jnp.take_along_axis(_per_example_mask(answer_mask, batch_size), top_indices, axis=1)
    mc = teacher_mc_scores(setup, teacher_head, batch['teacher_features'], batch['index'])
    points = losses.uncertainty_points(jnp.take_along_axis(mc, top_indices[:, None, :], axis=2))
    weights = {k: batch[k] for k in PAIRWISE_CACHE_FIELDS if k != 'top_indices'}
    rank = losses.pairwise_ranking_loss(
        jnp.take_along_axis(logits, top_indices, axis=1),
        jnp.take_along_axis(teacher, top_indices, axis=1), points, top_valid, weights,
        margin=setup.margin, strategy=setup.pairwise_strategy,
        block_size=setup.block_size or None, rng=keys,
        # The cache's top answers are in teacher order: only the upper-triangle blocks hold pairs.
        teacher_sorted=True)
  elif name == 'radi_l':
    rank = losses.radi_listwise_loss(
        logits, teacher, answer_mask, keys, k_hot=setup.k_hot, n_cold=setup.n_cold,
        sampling=setup.sampling, decay=setup.decay, loss=setup.listwise_loss, beta=setup.beta)
  elif name == 'kd':
    rank = losses.kd_loss(logits, teacher, answer_mask, temperature=setup.kd_temperature)
  elif name == 'dkd':
    rank = losses.dkd_loss(logits, teacher, targets, answer_mask, alpha=setup.dkd_alpha,
                           beta=setup.dkd_beta, temperature=setup.dkd_temperature)
  elif name == 'ctkd':
    strength = losses.ctkd_lambda(step, setup.ctkd_curriculum_steps, lambda_max=setup.ctkd_lambda_max)
    temperature = _temperature_module(setup).apply({'params': aux_params['ctkd']}, strength)
    rank = losses.ctkd_loss(logits, teacher, answer_mask, temperature)
  elif name == 'fitnet':
    hidden = outputs['mask_hidden'].shape[-1]
    regressor = functools.partial(losses.HintRegressor(hidden).apply, {'params': aux_params['fitnet']})
    rank = losses.fitnet_loss(outputs['mask_hidden'], batch['teacher_hidden'], regressor)
  elif name == 'rkd':
    value = losses.rkd_loss(outputs['mask_hidden'], batch['teacher_hidden'], batch['valid'],
                            distance_weight=setup.rkd_distance_weight,
                            angle_weight=setup.rkd_angle_weight)
    rank = jnp.full_like(cls, value)
  else:
    raise ValueError(f'unknown rank loss {name!r}')
  return cls, rank


def _temperature_module(setup: LossSetup) -> nn.Module:
  return losses.LearnableTemperature(min_temperature=setup.ctkd_min_temperature,
                                     max_temperature=setup.ctkd_max_temperature)


def init_aux_params(setup: LossSetup, hidden_size: int) -> dict:
  """Trainable parameters owned by a loss rather than the model (CTKD temperature, FitNet regressor)."""
  key = jax.random.PRNGKey(setup.seed)
  if setup.rank_loss == 'ctkd':
    return {'ctkd': jax.device_get(_temperature_module(setup).init(key, 0.0)['params'])}
  if setup.rank_loss == 'fitnet':
    hint = jnp.zeros((1, hidden_size), jnp.float32)
    return {'fitnet': jax.device_get(losses.HintRegressor(hidden_size).init(key, hint)['params'])}
  return {}


# ----------------------------------------------------------------------------- steps


def _model_inputs(batch: dict) -> tuple:
  return (batch['input_ids'], batch['attention_mask'], batch['video'], batch['video_mask'],
          batch['mask_position'])


def train_step(state: TrainState, frozen: dict, teacher_head: dict | None, batch: dict, *,
               model, setup: LossSetup, tx: optax.GradientTransformation,
               answer_mask: jnp.ndarray, axis_name: str | None = None
               ) -> tuple[TrainState, dict]:
  """One optimisation step on `L = L_cls + alpha * L_rank`.

  Args:
    state: trainable parameters, optimizer state, step.
    frozen: frozen model parameters (no gradients, no optimizer state, not checkpointed).
    teacher_head: {'embeddings': [N, E], 'bias': [N]} of the teacher, or None.
    batch: a global batch (`jit`) or this device's part of it (`pmap`, with `axis_name`).
    model: the FrozenBiLM module.
    setup: the loss description.
    tx: the optimizer.
    answer_mask: [N] valid answers.
    axis_name: the pmap axis, or None under `jit`.

  Returns:
    The new state and metric sums {'loss_sum', 'cls_sum', 'rank_sum', 'count', 'grad_norm'}.
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  dropout_key = jax.random.fold_in(step_key, 1)
  if axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
  valid = batch['valid'].astype(jnp.float32)
  count = valid.sum()
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
  denominator = jnp.maximum(count, 1.0)

  def loss_fn(params):
    outputs = model.apply({'params': merge_params(params['model'], frozen)}, *_model_inputs(batch),
                          deterministic=False, rngs={'dropout': dropout_key})
    cls, rank = loss_terms(setup, outputs, batch, teacher_head, params['aux'], answer_mask,
                           jax.random.fold_in(step_key, 2), state.step)
    cls_sum = (cls * valid).sum()
    rank_sum = (rank * valid).sum()
    loss = (cls_sum + setup.alpha * rank_sum) / denominator
    return loss, (cls_sum, rank_sum)

  grads, (cls_sum, rank_sum) = jax.grad(loss_fn, has_aux=True)(state.params)
  sums = {'cls_sum': cls_sum, 'rank_sum': rank_sum}
  if axis_name is not None:
    grads = jax.lax.psum(grads, axis_name)
    sums = jax.lax.psum(sums, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(sums, count=count, grad_norm=optax.global_norm(grads),
                 loss_sum=sums['cls_sum'] + setup.alpha * sums['rank_sum'])
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def forward(params: dict, batch: dict, *, model) -> dict:
  """Deterministic forward: logits [B, N], answer_features [B, E], mask_hidden [B, H]."""
  return model.apply({'params': params}, *_model_inputs(batch), deterministic=True)


def eval_step(params: dict, batch: dict, *, model, answer_mask: jnp.ndarray, top_k: int) -> dict:
  """Per-example ranking metrics and the top-k answers with their scores."""
  logits = forward(params, batch, model=model)['logits']
  logits = jnp.where(answer_mask, logits, -jnp.inf)
  per_example = metrics_lib.ranking_metrics(logits, batch['relevance'], answer_mask)
  top_scores, top_indices = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_k)
  return dict(per_example, top_indices=top_indices, top_scores=jnp.exp(top_scores))
