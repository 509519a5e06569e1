"""The stages of a radi_jax run and `train_and_evaluate`, the library function behind `radi_jax.train`.

Workdir layout (each run resumes from its own checkpoints and is skipped once `done.json` exists):

  data/                       TFDS data (and the generated synth_vqa raw files)
  teacher/                    the teacher, trained with L_cls (also the paper's baseline)
  cache/                      the teacher cache (see `teacher_cache`)
  individual/                 the 'individual' student initialisation (L_cls, seed + 1)
  student_<loss>/             one student per entry of `student.losses`
  report.md, report.json      teacher vs students; <run>/predictions_<split>.jsonl; PNG plots
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from radi_jax import data as data_lib
from radi_jax import metrics as metrics_lib
from radi_jax.model import config as model_config_lib
from radi_jax.model import frozenbilm
from radi_jax.model import weights as weights_lib
from radi_jax.training import checkpoints
from radi_jax.training import errors
from radi_jax.training import parallel as parallel_lib
from radi_jax.training import reporting
from radi_jax.training import steps
from radi_jax.training import teacher_cache

logger = logging.getLogger(__name__)

STAGES = ('teacher', 'cache', 'student', 'eval', 'pipeline')
TEACHER, INDIVIDUAL, CACHE = 'teacher', 'individual', 'cache'
DONE = 'done.json'
METRIC_NAMES = ('acc1', 'hit5', 'ndcg5')


def student_run_name(loss: str) -> str:
  return f'student_{loss}'


@dataclasses.dataclass
class Context:
  """What every stage of one run shares."""

  config: ml_collections.ConfigDict
  workdir: str
  data: Any  # radi_jax.data.VQAData
  parallel: parallel_lib.DataParallel
  model: frozenbilm.FrozenBiLM
  answer_mask: np.ndarray  # [N] bool
  compiled: dict = dataclasses.field(default_factory=dict)  # Jitted functions, built once per run.

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  def run_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)


# ----------------------------------------------------------------------------- setup


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any compute, with one line, on a bad stage or a missing file or directory."""
  if config.stage not in STAGES:
    raise errors.ConfigError(f'stage: expected one of {STAGES}, got {config.stage!r}')
  for loss in config.student.losses:
    if loss not in steps.RANK_LOSSES:
      raise errors.ConfigError(
          f'student.losses: unknown loss {loss!r}; expected one of {steps.RANK_LOSSES}')
  if config.student.init not in ('scratch', 'teacher', 'individual'):
    raise errors.ConfigError(
        f"student.init: expected 'scratch', 'teacher' or 'individual', got {config.student.init!r}")
  for key in ('pretrained', 'data.manual_dir', 'data.tokenizer_dir'):
    path = config
    for part in key.split('.'):
      path = path[part]
    if path and not os.path.exists(path):
      raise errors.ConfigError(f'{key}: {path} does not exist')


def make_context(config: ml_collections.ConfigDict, workdir: str) -> Context:
  check_config(config)
  with config.unlocked():
    if not config.data.data_dir:
      config.data.data_dir = os.path.join(workdir, 'data')
  if jax.process_count() > 1:
    # Process 0 builds the dataset; the others open the finished build.
    if jax.process_index() == 0:
      data_lib.open_dataset(config.data)
    multihost_utils.sync_global_devices('dataset_built')
  data = data_lib.open_dataset(config.data)
  with config.unlocked():
    config.model.num_answers = data.num_answers
    if not config.pretrained:
      # A model trained from scratch takes its word vocabulary from the data's tokenizer.
      config.model.deberta.vocab_size = len(data.tokenizer)
  if len(data.tokenizer) > config.model.deberta.vocab_size:
    raise errors.ConfigError(
        f'data.tokenizer_dir: the tokenizer has {len(data.tokenizer)} tokens but '
        f'model.deberta.vocab_size is {config.model.deberta.vocab_size}; expected the tokenizer of '
        'the pretrained weights')
  parallel = parallel_lib.DataParallel(config.parallel.mode)
  parallel.check_batch_size('train.batch_size', config.train.batch_size)
  parallel.check_batch_size('eval.batch_size', config.eval.batch_size)
  model = frozenbilm.FrozenBiLM(model_config_lib.model_config(config.model))
  return Context(config=config, workdir=workdir, data=data, parallel=parallel, model=model,
                 answer_mask=np.ones((data.num_answers,), bool))


def _dummy_batch(ctx: Context) -> dict:
  length = 8
  return dict(
      input_ids=np.zeros((1, length), np.int32), attention_mask=np.ones((1, length), np.int32),
      video=np.zeros((1, ctx.config.data.max_feats, ctx.config.data.features_dim), np.float32),
      video_mask=np.ones((1, ctx.config.data.max_feats), np.int32),
      mask_position=np.zeros((1,), np.int32))


def _init_model_params(ctx: Context, seed: int) -> dict:
  batch = _dummy_batch(ctx)
  params = jax.jit(lambda key: ctx.model.init(key, *steps._model_inputs(batch), deterministic=True)
                  )(jax.random.PRNGKey(seed))['params']
  params = jax.device_get(params)
  if ctx.config.pretrained:
    params = weights_lib.merge_pretrained(params, weights_lib.load_pretrained(ctx.config.pretrained))
  ids, mask = data_lib.tokenize_answers(ctx.data.tokenizer, ctx.data.answers,
                                        max_atokens=ctx.config.model.max_atokens)
  return jax.device_get(frozenbilm.init_answer_head(params, ids, mask))


def trainable_mask(ctx: Context, params: dict) -> dict:
  return frozenbilm.trainable_mask(params, train_answer_head=ctx.config.train_answer_head,
                                   train_backbone=ctx.config.train_backbone)


def initial_params(ctx: Context, seed: int) -> tuple[dict, dict]:
  """(trainable, frozen) parameters of a run with this seed.

  Frozen leaves always come from the base seed (`config.seed`) so that every run of a workdir shares
  one backbone; trainable leaves come from the run's seed unless pretrained weights provide them.
  """
  base = _init_model_params(ctx, ctx.config.seed)
  mask = trainable_mask(ctx, base)
  trainable, frozen = steps.split_params(base, mask)
  if seed != ctx.config.seed:
    trainable, _ = steps.split_params(_init_model_params(ctx, seed), mask)
  return trainable, frozen


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """AdamW, linear warmup over `warmup_fraction` of the steps then linear decay to 0, clipping."""
  warmup = max(1, int(config.train.warmup_fraction * total_steps))
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, config.train.learning_rate, warmup),
      optax.linear_schedule(config.train.learning_rate, 0.0, max(1, total_steps - warmup)),
  ], [warmup])
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=config.train.weight_decay))


def _config_hash(*parts: Any) -> str:
  text = json.dumps([p.to_dict() if hasattr(p, 'to_dict') else p for p in parts], sort_keys=True,
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_json(path: str, value: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- evaluation


def evaluate(ctx: Context, params: dict, split: str, *, predictions: bool = False
             ) -> tuple[dict, list[dict]]:
  """Acc@1, Hit@5, nDCG@5 (+ per-type accuracy) of full model params on a split."""
  config = ctx.config
  local_batch = config.eval.batch_size // jax.process_count()
  loader = data_lib.make_eval_loader(ctx.data, config.data, split, batch_size=local_batch,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  eval_fn = _compiled(ctx, 'eval', lambda: ctx.parallel.compile_batch_fn(
      steps.eval_step, model=ctx.model, answer_mask=jnp.asarray(ctx.answer_mask),
      top_k=config.eval.top_k))
  device_params = ctx.parallel.replicate(params)
  columns: dict[str, list] = {k: [] for k in METRIC_NAMES + ('valid', 'type_id', 'index',
                                                            'top_indices', 'top_scores')}
  for batch in loader:
    out = ctx.parallel.to_host(eval_fn(device_params, ctx.parallel.shard_batch(_model_batch(batch))))
    for k in METRIC_NAMES + ('top_indices', 'top_scores'):
      columns[k].append(out[k])
    for k in ('valid', 'type_id', 'index'):
      columns[k].append(np.asarray(batch[k]))
  local = {k: np.concatenate(v) for k, v in columns.items()}
  gathered = (multihost_utils.process_allgather(local, tiled=True)
              if jax.process_count() > 1 else local)
  accumulator = metrics_lib.RankingMetricsAccumulator(type_names=ctx.data.type_names)
  accumulator.add({k: gathered[k] for k in METRIC_NAMES}, gathered['valid'], gathered['type_id'])
  result = {k: v for k, v in accumulator.result().items() if not k.startswith('acc1/')}
  per_type = {k[len('acc1/'):]: v for k, v in accumulator.result().items() if k.startswith('acc1/')}
  if per_type:
    result['per_type'] = per_type
  rows = []
  if predictions:
    for i in np.flatnonzero(gathered['valid']):
      rows.append({
          'index': int(gathered['index'][i]),
          'answers': [ctx.data.answers[j] for j in gathered['top_indices'][i]],
          'scores': [round(float(s), 5) for s in gathered['top_scores'][i]],
          'acc1': float(gathered['acc1'][i]),
      })
  return result, rows


def _compiled(ctx: Context, name: str, build):
  if name not in ctx.compiled:
    ctx.compiled[name] = build()
  return ctx.compiled[name]


def _model_batch(batch: dict) -> dict:
  """The arrays a device step needs (drops host-only fields)."""
  return {k: v for k, v in batch.items() if k not in ('type_id',)}


# ----------------------------------------------------------------------------- training


def _cache_fields(losses: tuple[str, ...]) -> list[str]:
  fields = ['teacher_features']
  if 'radi_p' in losses:
    fields += list(steps.PAIRWISE_CACHE_FIELDS)
  if 'fitnet' in losses or 'rkd' in losses:
    fields += ['teacher_hidden']
  return fields


def train_run(ctx: Context, name: str, *, seed: int, setup: steps.LossSetup,
              init_trainable: dict | None = None, cache: teacher_cache.TeacherCache | None = None
              ) -> dict:
  """Trains one model (teacher, individual or student) in `<workdir>/<name>`, resuming if possible.

  Returns:
    The run's summary (also `<name>/done.json`): best step and its validation metrics.
  """
  config = ctx.config
  run_dir = ctx.run_dir(name)
  done = _read_json(os.path.join(run_dir, DONE))
  if done is not None:
    logger.info('%s: finished earlier (best step %s), skipped', name, done['best_step'])
    return done
  os.makedirs(run_dir, exist_ok=True)

  local_batch = ctx.parallel.check_batch_size('train.batch_size', config.train.batch_size)
  loader = data_lib.make_train_loader(ctx.data, config.data, batch_size=local_batch, seed=seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  steps_per_epoch = loader.steps_per_epoch
  total_steps = steps_per_epoch * config.train.num_epochs
  setup = dataclasses.replace(setup, ctkd_curriculum_steps=max(
      1, int(total_steps * config.ctkd.curriculum_fraction)))

  trainable, frozen = initial_params(ctx, seed)
  if init_trainable is not None:
    trainable = init_trainable
  hidden = config.model.deberta.hidden_size
  params = {'model': trainable, 'aux': steps.init_aux_params(setup, hidden)}
  tx = make_optimizer(config, total_steps)
  host_state = steps.init_train_state(params, tx, seed)

  iterator = iter(loader)
  history_path = os.path.join(run_dir, 'history.jsonl')
  teacher_head = (jax.tree.map(jnp.asarray, {'embeddings': cache.teacher_head['embeddings'],
                                              'bias': cache.teacher_head['bias']})
                  if cache is not None else None)
  with checkpoints.StageCheckpointer(os.path.join(run_dir, 'checkpoints'),
                                     keep_latest=config.train.keep_checkpoints,
                                     best_metric='val/acc1') as ckpt:
    resumed_sums = None
    if ckpt.latest_step() is not None:
      restored, data_state, metadata = ckpt.restore(state_template=_state_dict(host_state))
      host_state = _state_from_dict(restored)
      resumed_sums = metadata.get('epoch_sums')
      iterator.set_state(data_state)
      logger.info('%s: resumed from step %d', name, int(host_state.step))
    step = int(host_state.step)
    state = ctx.parallel.replicate(host_state)
    frozen_device = ctx.parallel.replicate(frozen)
    head_device = ctx.parallel.replicate(teacher_head) if teacher_head is not None else None
    train_fn = ctx.parallel.compile_train_step(
        steps.train_step, model=ctx.model, setup=setup, tx=tx,
        answer_mask=jnp.asarray(ctx.answer_mask))
    writer = reporting.MetricWriter(os.path.join(run_dir, 'tensorboard'), enabled=ctx.is_chief)
    progress = reporting.ProgressBar(name, total_steps, initial_step=step, enabled=ctx.is_chief)
    # Running sums of the current epoch (saved with checkpoints, so a resumed epoch's mean is exact).
    sums = {'loss_sum': 0.0, 'cls_sum': 0.0, 'rank_sum': 0.0, 'count': 0.0}
    if resumed_sums:
      sums.update(resumed_sums)
    last_good = ckpt.latest_step()
    try:
      while step < total_steps:
        batch = next(iterator)
        if cache is not None:
          batch.update(cache.lookup(batch['index'], batch['valid']))
        state, metrics = train_fn(state, frozen_device, head_device,
                                  ctx.parallel.shard_batch(_model_batch(batch)))
        metrics = ctx.parallel.scalar(metrics)
        step += 1
        count = max(float(metrics['count']), 1.0)
        loss = float(metrics['loss_sum']) / count
        if not np.isfinite(loss):
          raise errors.TrainingDiverged(
              f'{name}: loss is {loss} at step {step} (L_cls={float(metrics["cls_sum"]) / count:.4g}, '
              f'L_rank={float(metrics["rank_sum"]) / count:.4g}); stopped, the last good checkpoint '
              f'(step {last_good}) is kept in {os.path.join(run_dir, "checkpoints")}')
        for k in sums:
          sums[k] += float(metrics[k])
        progress.update(step, loss=loss, examples=int(metrics['count']))
        if step % config.train.log_every_steps == 0:
          writer.scalars(step, {'train/loss': loss,
                                'train/grad_norm': float(metrics['grad_norm'])})
        epoch_end = step % steps_per_epoch == 0
        if epoch_end or step % config.train.checkpoint_every_steps == 0:
          record = None
          if epoch_end:
            full = steps.merge_params(ctx.parallel.scalar(state.params)['model'], frozen)
            val, _ = evaluate(ctx, full, 'val')
            denominator = max(sums['count'], 1.0)
            record = {'epoch': step // steps_per_epoch, 'step': step,
                      'train/loss': sums['loss_sum'] / denominator,
                      'train/cls': sums['cls_sum'] / denominator,
                      'train/rank': sums['rank_sum'] / denominator,
                      **{f'val/{k}': val[k] for k in METRIC_NAMES}}
            sums = dict.fromkeys(sums, 0.0)
            writer.scalars(step, {k: v for k, v in record.items() if '/' in k})
            if ctx.is_chief:
              reporting.append_history(history_path, record)
          ckpt.save(step, _state_dict(ctx.parallel.scalar(state)),
                    data_state=iterator.get_state(),
                    metadata={'epoch': step / steps_per_epoch, 'epoch_sums': sums},
                    metrics={'val/acc1': record['val/acc1']} if record else None, force=True)
          last_good = step
    finally:
      progress.close()
      writer.close()
    ckpt.wait_until_finished()
    best_step = ckpt.best_step() or ckpt.latest_step()
  history = reporting.read_history(history_path)
  best = next((r for r in history if r['step'] == best_step), history[-1] if history else {})
  summary = {'run': name, 'best_step': best_step, 'total_steps': total_steps, 'seed': seed,
             'num_answers': ctx.data.num_answers,
             'rank_loss': setup.rank_loss, **{k: v for k, v in best.items() if k.startswith('val/')}}
  if ctx.is_chief:
    reporting.plot_history(history, os.path.join(run_dir, 'curves.png'), title=name)
    _write_json(os.path.join(run_dir, DONE), summary)
  return summary


def _state_dict(state: steps.TrainState) -> dict:
  return {'step': state.step, 'rng': state.rng, 'params': state.params,
          'opt_state': state.opt_state}


def _state_from_dict(value: dict) -> steps.TrainState:
  return steps.TrainState(**value)


def restore_best_params(ctx: Context, name: str, *, seed: int, setup: steps.LossSetup | None = None
                        ) -> tuple[dict, dict]:
  """(full model params, trainable model params) of a finished run's best checkpoint."""
  done = _read_json(os.path.join(ctx.run_dir(name), DONE))
  if done is None:
    raise errors.ConfigError(f'{ctx.run_dir(name)}: run {name!r} has not finished; train it first')
  trainable, frozen = initial_params(ctx, seed)
  setup = setup or steps.LossSetup(seed=ctx.config.seed)
  params = {'model': trainable,
            'aux': steps.init_aux_params(setup, ctx.config.model.deberta.hidden_size)}
  # The optimizer state's structure does not depend on the schedule length.
  template = _state_dict(steps.init_train_state(params, make_optimizer(ctx.config, 1), seed))
  with checkpoints.StageCheckpointer(os.path.join(ctx.run_dir(name), 'checkpoints'),
                                     keep_latest=ctx.config.train.keep_checkpoints,
                                     best_metric='val/acc1') as ckpt:
    restored, _, _ = ckpt.restore(done['best_step'], state_template=template)
  trained = restored['params']['model']
  return steps.merge_params(trained, frozen), trained


# ----------------------------------------------------------------------------- stages


def run_teacher(ctx: Context) -> dict:
  return train_run(ctx, TEACHER, seed=ctx.config.seed, setup=steps.LossSetup(seed=ctx.config.seed))


def _cache_manifest(ctx: Context, teacher_step: int) -> dict:
  config = ctx.config
  return {
      'teacher_step': teacher_step,
      # Only what changes the cached numbers (not, e.g., the loss weights).
      'config_hash': _config_hash(config.model, config.cache, config.seed, config.pretrained,
                                  config.data.train_targets,
                                  {k: config.radi_p[k] for k in ('num_top', 'mc_samples', 'lam_rel',
                                                                 'strategy')}),
      'dataset_fingerprint': ctx.data.fingerprint,
  }


def run_cache(ctx: Context) -> str:
  """One pass of the frozen teacher over the train split; writes `<workdir>/cache`."""
  config = ctx.config
  directory = ctx.run_dir(CACHE)
  teacher_done = _read_json(os.path.join(ctx.run_dir(TEACHER), DONE))
  if teacher_done is None:
    raise errors.ConfigError(f'{ctx.run_dir(TEACHER)}: no finished teacher; run the teacher stage first')
  manifest = _cache_manifest(ctx, teacher_done['best_step'])
  fields = _cache_fields(tuple(config.student.losses))
  existing = teacher_cache.read_manifest(directory)
  if existing is not None:
    try:
      teacher_cache.check_manifest(directory, manifest, fields)
      logger.info('cache: up to date, skipped')
      return directory
    except errors.StaleCacheError:
      logger.info('cache: stale, rebuilding')
  params, _ = restore_best_params(ctx, TEACHER, seed=config.seed)
  embeddings, bias = frozenbilm.answer_head(params)
  head = {'embeddings': np.asarray(embeddings, np.float32), 'bias': np.asarray(bias, np.float32)}
  setup = steps.loss_setup_from_config(config, 'radi_p')
  answer_mask = jnp.asarray(ctx.answer_mask)
  if config.cache.dtype not in ('float32', 'bfloat16'):
    raise errors.ConfigError(f"cache.dtype: expected 'float32' or 'bfloat16', got {config.cache.dtype!r}")
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.cache.dtype]

  def cache_step(params, batch):
    out = steps.forward(params, batch, model=ctx.model)
    row = {'teacher_features': out['answer_features'], 'teacher_hidden': out['mask_hidden']}
    if 'top_indices' in fields:
      # From the features as stored, so the student step ranks the answers as the cache did.
      stored = out['answer_features'].astype(dtype).astype(jnp.float32)
      side = steps.pairwise_teacher_side(setup, jax.tree.map(jnp.asarray, head), stored,
                                         batch['index'], answer_mask)
      row.update({k: side[k] for k in steps.PAIRWISE_CACHE_FIELDS})
      row['sinkhorn_converged'] = side['sinkhorn_converged']
      row['sinkhorn_iterations'] = side['sinkhorn_iterations']
    return row

  cache_fn = ctx.parallel.compile_batch_fn(cache_step)
  local_batch = config.eval.batch_size // jax.process_count()
  loader = data_lib.make_eval_loader(ctx.data, config.data, 'train', batch_size=local_batch,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  device_params = ctx.parallel.replicate(params)
  parts: dict[str, list] = {}
  progress = reporting.ProgressBar('cache', loader.num_steps,
                                   enabled=ctx.is_chief)
  for i, batch in enumerate(loader):
    out = ctx.parallel.to_host(cache_fn(device_params, ctx.parallel.shard_batch(_model_batch(batch))))
    out['index'], out['valid'] = np.asarray(batch['index']), np.asarray(batch['valid'])
    for k, v in out.items():
      parts.setdefault(k, []).append(v)
    progress.update(i + 1, loss=0.0, examples=int(np.sum(batch['valid'])))
  progress.close()
  local = {k: np.concatenate(v) for k, v in parts.items()}
  rows = (multihost_utils.process_allgather(local, tiled=True)
          if jax.process_count() > 1 else local)
  keep = rows['valid'].astype(bool)
  size = ctx.data.num_train_index
  arrays = {}
  for name in fields:
    value = rows[name][keep]
    if name in ('teacher_features', 'teacher_hidden'):
      value = value.astype(dtype)
    array = np.zeros((size,) + value.shape[1:], value.dtype)
    array[rows['index'][keep]] = value
    arrays[name] = array
  stats = {}
  if 'top_indices' in fields:
    stats = {'sinkhorn_converged_fraction': float(np.mean(rows['sinkhorn_converged'][keep])),
             'sinkhorn_mean_iterations': float(np.mean(rows['sinkhorn_iterations'][keep]))}
    logger.info('cache: Sinkhorn converged on %.1f%% of examples, %.0f iterations on average',
                 100 * stats['sinkhorn_converged_fraction'], stats['sinkhorn_mean_iterations'])
  if ctx.is_chief:
    teacher_cache.write(directory, arrays, head, dict(manifest, **stats))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('teacher_cache_written')
  return directory


def _student_init(ctx: Context) -> dict | None:
  config = ctx.config
  if config.student.init == 'scratch':
    return None
  if config.student.init == 'teacher':
    return restore_best_params(ctx, TEACHER, seed=config.seed)[1]
  train_run(ctx, INDIVIDUAL, seed=config.seed + 1, setup=steps.LossSetup(seed=config.seed + 1))
  return restore_best_params(ctx, INDIVIDUAL, seed=config.seed + 1)[1]


def run_students(ctx: Context) -> list[dict]:
  config = ctx.config
  losses = tuple(config.student.losses)
  directory = ctx.run_dir(CACHE)
  teacher_done = _read_json(os.path.join(ctx.run_dir(TEACHER), DONE))
  if teacher_done is None:
    raise errors.ConfigError(f'{ctx.run_dir(TEACHER)}: no finished teacher; run the teacher stage first')
  fields = _cache_fields(losses)
  teacher_cache.check_manifest(directory, _cache_manifest(ctx, teacher_done['best_step']), fields)
  cache = teacher_cache.TeacherCache(directory, fields)
  init = _student_init(ctx)
  summaries = []
  for loss in losses:
    setup = steps.loss_setup_from_config(config, loss)
    seed = config.seed + 1 if config.student.init == 'individual' else config.seed
    summaries.append(train_run(ctx, student_run_name(loss), seed=seed, setup=setup,
                               init_trainable=init, cache=cache))
  return summaries


def evaluated_runs(ctx: Context) -> list[tuple[str, int, steps.LossSetup]]:
  """(name, seed, loss setup) of every finished run of the workdir, teacher first."""
  config = ctx.config
  runs = [(TEACHER, config.seed, steps.LossSetup(seed=config.seed))]
  if config.student.init == 'individual':
    runs.append((INDIVIDUAL, config.seed + 1, steps.LossSetup(seed=config.seed + 1)))
  seed = config.seed + 1 if config.student.init == 'individual' else config.seed
  for loss in config.student.losses:
    runs.append((student_run_name(loss), seed, steps.loss_setup_from_config(config, loss)))
  return [r for r in runs if is_finished(ctx, r[0])]


def is_finished(ctx: Context, name: str) -> bool:
  return os.path.exists(os.path.join(ctx.run_dir(name), DONE))


def run_eval(ctx: Context) -> dict:
  """Metrics of every finished run's best checkpoint on the eval splits, predictions and the report."""
  config = ctx.config
  results = {}
  for name, seed, setup in evaluated_runs(ctx):
    params, _ = restore_best_params(ctx, name, seed=seed, setup=setup)
    results[name] = {}
    for split in config.eval.splits:
      split_metrics, rows = evaluate(ctx, params, split, predictions=True)
      results[name][split] = split_metrics
      if ctx.is_chief:
        _write_predictions(os.path.join(ctx.run_dir(name), f'predictions_{split}.jsonl'), rows)
  if ctx.is_chief and results:
    cache_manifest = teacher_cache.read_manifest(ctx.run_dir(CACHE)) or {}
    summary = {'dataset': config.data.name, 'num_answers': ctx.data.num_answers,
               'student_losses': list(config.student.losses), 'student_init': config.student.init,
               'alpha': {loss: config[loss].weight for loss in config.student.losses
                         if loss != 'none'}, 'epochs': config.train.num_epochs,
               'devices': jax.device_count(), 'parallel': config.parallel.mode}
    summary.update({k: v for k, v in cache_manifest.items() if k.startswith('sinkhorn_')})
    reporting.write_report(ctx.workdir, results, config_summary=summary)
    print(reporting.format_results_table(results))
  return results


def _write_predictions(path: str, rows: list[dict]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
  os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Runs `config.stage` (or every stage, for 'pipeline') in `workdir`."""
  check_config(config)  # Before anything is written.
  os.makedirs(workdir, exist_ok=True)
  ctx = make_context(config, workdir)
  stage = config.stage
  started = time.time()
  result = None
  if stage in ('teacher', 'pipeline'):
    result = run_teacher(ctx)
  if stage in ('cache', 'pipeline'):
    run_cache(ctx)
  if stage in ('student', 'pipeline'):
    result = run_students(ctx)
  if stage in ('eval', 'pipeline'):
    result = run_eval(ctx)
  logger.info('%s finished in %.1f s', stage, time.time() - started)
  return result
