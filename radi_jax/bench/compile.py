"""Compile time of the FrozenBiLM forward: 24 vs 2 layers of the same width.

    python -m radi_jax.bench compile [--hidden 256] [--shallow 2] [--deep 24]

With `scan_layers` the layer body is compiled once, so the deep/shallow ratio should stay ≤ 2;
the unscanned ratio is printed for contrast. Weights are never allocated (abstract shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from radi_jax.model import presets
from radi_jax.model.config import model_config
from radi_jax.model.frozenbilm import FrozenBiLM
from radi_jax.model.summary import abstract_params


def compile_seconds(config, batch: int = 2, text: int = 32) -> float:
  """Seconds to lower and compile one jitted forward (inference) of `config`."""
  model = FrozenBiLM(config)
  params = abstract_params(config)
  args = (jax.ShapeDtypeStruct((batch, text), jnp.int32), jax.ShapeDtypeStruct((batch, text), jnp.int32),
          jax.ShapeDtypeStruct((batch, config.max_feats, config.features_dim), jnp.float32),
          jax.ShapeDtypeStruct((batch, config.max_feats), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32))
  forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a, deterministic=True)["logits"])
  start = time.perf_counter()
  forward.lower(params, *args).compile()
  return time.perf_counter() - start


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m radi_jax.bench compile", description=__doc__.split("\n")[0])
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--shallow", type=int, default=2)
  parser.add_argument("--deep", type=int, default=24)
  args = parser.parse_args(argv)
  base = model_config(presets.tiny())
  deberta = dataclasses.replace(base.deberta, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                num_attention_heads=max(1, args.hidden // 64))
  compile_seconds(dataclasses.replace(base, deberta=dataclasses.replace(deberta, num_hidden_layers=1)))  # warm-up
  for scan in (True, False):
    seconds = {}
    for layers in (args.shallow, args.deep):
      config = dataclasses.replace(base, scan_layers=scan,
                                   deberta=dataclasses.replace(deberta, num_hidden_layers=layers))
      seconds[layers] = compile_seconds(config)
    ratio = seconds[args.deep] / seconds[args.shallow]
    target = "  (target <= 2.00)" if scan else "  (for contrast)"
    print(f"scan_layers={scan!s:<5} compile {args.shallow:>2} layers {seconds[args.shallow]:6.2f}s  "
          f"{args.deep:>2} layers {seconds[args.deep]:6.2f}s  ratio {ratio:5.2f}{target}")
  return 0
