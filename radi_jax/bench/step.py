"""Student step time with RADI-P and RADI-L, as ratios to the plain L_cls step, from one run.

  python -m radi_jax.bench step [--settings demo,large] [--rounds 3] [--steps 2]

Settings:
  demo   the demo model (tiny DeBERTa, every weight trained), the synth_vqa answer count.
  large  a DeBERTa-v2-base-sized frozen backbone with adapters (hidden 768, 12 layers, vocabulary
         128100), 4000 answers, N_p = 2500, T = 10: the shape of the paper's setting at a width that a
         CPU steps in seconds.
  xlarge the paper's DeBERTa-v2-xlarge size (hidden 1536, 24 layers), otherwise as `large`
         (tens of seconds per step on a CPU; not in the default list).

Each setting compiles one jitted `train_step` per loss on the same random batch and teacher cache
(the cache's Sinkhorn scalings are computed once, as the cache stage does), then times them in
interleaved rounds so that machine noise hits all of them alike. Ratios are medians over rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from radi_jax.model import config as model_config_lib
from radi_jax.model import frozenbilm
from radi_jax.model import presets
from radi_jax.training import steps

LOSSES = ('none', 'radi_p', 'radi_l')
WEIGHTS = {'none': 0.0, 'radi_p': 100.0, 'radi_l': 10.0}


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  preset: str  # 'tiny' | 'deberta_v2_xlarge'
  model_overrides: dict
  train_backbone: bool
  num_answers: int
  num_top: int
  batch_size: int = 32
  text_length: int = 32
  block_size: int = 512


SETTINGS = {
    'demo': Setting('demo', 'tiny', {}, train_backbone=True, num_answers=300, num_top=300, block_size=128),
    'large': Setting('large', 'deberta_v2_xlarge', dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072, vocab_size=128100),
                     train_backbone=False, num_answers=4000, num_top=2500),
    'xlarge': Setting('xlarge', 'deberta_v2_xlarge', {},
                      train_backbone=False, num_answers=4000, num_top=2500),
}


def _model(setting: Setting) -> frozenbilm.FrozenBiLM:
  config = getattr(presets, setting.preset)()
  for key, value in setting.model_overrides.items():
    config.deberta[key] = value
  config.num_answers = setting.num_answers
  return frozenbilm.FrozenBiLM(model_config_lib.model_config(config))


def _batch(setting: Setting, model: frozenbilm.FrozenBiLM, rng: np.random.Generator) -> dict:
  cfg = model.config
  b, length, frames = setting.batch_size, setting.text_length, 10
  targets = np.zeros((b, setting.num_answers), np.float32)
  targets[np.arange(b), rng.integers(0, setting.num_answers, b)] = 1.0
  return dict(
      input_ids=rng.integers(5, cfg.deberta.vocab_size, (b, length)).astype(np.int32),
      attention_mask=np.ones((b, length), np.int32),
      video=rng.normal(size=(b, frames, cfg.features_dim)).astype(np.float32),
      video_mask=np.ones((b, frames), np.int32),
      mask_position=np.full((b,), length - 3, np.int32),
      targets=targets, relevance=targets, index=np.arange(b, dtype=np.int64),
      valid=np.ones((b,), bool))


def _time(fn, state, args, num_steps):
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = fn(state, *args)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - start) / num_steps


def run_setting(setting: Setting, rounds: int, num_steps: int) -> dict[str, float]:
  """Median seconds per step of each loss in LOSSES."""
  rng = np.random.default_rng(0)
  model = _model(setting)
  batch = _batch(setting, model, rng)
  model_inputs = steps._model_inputs(batch)  # pylint: disable=protected-access
  params = jax.jit(lambda k: model.init(k, *model_inputs, deterministic=True))(
      jax.random.PRNGKey(0))['params']
  mask = frozenbilm.trainable_mask(params, train_backbone=setting.train_backbone)
  trainable, frozen = steps.split_params(params, mask)
  embeddings, bias = frozenbilm.answer_head(params)
  teacher_head = {'embeddings': jnp.asarray(embeddings), 'bias': jnp.asarray(bias)}
  answer_mask = jnp.ones((setting.num_answers,), bool)
  batch['teacher_features'] = rng.normal(size=(setting.batch_size, embeddings.shape[1])).astype(
      np.float32)

  base = steps.LossSetup(num_top=setting.num_top, block_size=setting.block_size)
  side = jax.jit(lambda f, i: steps.pairwise_teacher_side(base, teacher_head, f, i, answer_mask))(
      batch['teacher_features'], batch['index'])
  batch.update({k: np.asarray(side[k]) for k in steps.PAIRWISE_CACHE_FIELDS})
  tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(5e-5))  # The paper's optimizer.
  fns, states = {}, {}
  for loss in LOSSES:
    setup = dataclasses.replace(base, rank_loss=loss, alpha=WEIGHTS[loss])
    fns[loss] = jax.jit(lambda s, f, h, b, setup=setup: steps.train_step(
        s, f, h, b, model=model, setup=setup, tx=tx, answer_mask=answer_mask), donate_argnums=(0,))
    p = {'model': trainable, 'aux': {}}
    # A copy per loss: each step donates its state.
    states[loss] = jax.tree.map(lambda x: jnp.array(x, copy=True), steps.init_train_state(p, tx, 0))
    states[loss], _ = _time(fns[loss], states[loss], (frozen, teacher_head, batch), 1)  # Compile.
  times = {loss: [] for loss in LOSSES}
  for _ in range(rounds):
    for loss in LOSSES:
      states[loss], seconds = _time(fns[loss], states[loss], (frozen, teacher_head, batch),
                                    num_steps)
      times[loss].append(seconds)
  return {loss: float(np.median(t)) for loss, t in times.items()}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m radi_jax.bench step')
  parser.add_argument('--settings', default='demo,large')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2, help='steps per timed round')
  args = parser.parse_args(argv)
  print(f'machine: {platform.processor() or platform.machine()}, {jax.device_count()} '
        f'{jax.devices()[0].platform} device(s), jax {jax.__version__}')
  print(f'{"setting":8s} {"L_cls step":>11s} {"RADI-P":>16s} {"RADI-L":>16s}')
  for name in args.settings.split(','):
    seconds = run_setting(SETTINGS[name], args.rounds, args.steps)
    base = seconds['none']
    print(f'{name:8s} {base * 1e3:9.1f}ms {seconds["radi_p"] * 1e3:9.1f}ms x{seconds["radi_p"] / base:4.2f}'
          f' {seconds["radi_l"] * 1e3:9.1f}ms x{seconds["radi_l"] / base:4.2f}', flush=True)
  return 0
