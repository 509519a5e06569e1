"""Loss benchmark: ``python -m radi_jax.bench losses [--quick] [--batch 32] [--sizes 500,2500,4000]``.

For each list size N_p it times one forward + backward (gradient with respect to the student
scores) of: plain cross-entropy over N_p answers (the scale), RADI-P's student side dense and in
row blocks (teacher numbers precomputed, as the trainer caches them), and RADI-L (ListMLE and
LambdaLoss-NDCG2++ on a 100 + 10 partial list drawn from N_p answers); and, once per example in
the cache stage, RADI-P's teacher side (uncertainty points + Sinkhorn, lam_rel 1). Peak memory is XLA's
compiled estimate (arguments + outputs + temporaries) from `memory_analysis()`; a case whose
estimate exceeds ``--max-run-gib`` is compiled but not run. Times are medians of ``--repeats``
samples after one warm-up (fast calls are timed in groups of at least 50 ms), and ratios are to cross-entropy at the same size in the same run.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from radi_jax.losses import classification
from radi_jax.losses import listwise
from radi_jax.losses import pairwise

_MIB = 2.0 ** 20
_MIN_SAMPLE_SECONDS = 0.05


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m radi_jax.bench losses", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="batch 8, sizes 500 and 2500, one timed call (a smoke run)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--sizes", default="500,2500,4000", help="comma-separated N_p values")
  parser.add_argument("--samples", type=int, default=10, help="T, MC-dropout scorings")
  parser.add_argument("--block-size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max-run-gib", type=float, default=6.0,
                      help="compile but do not run cases whose peak estimate is larger")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.sizes, args.repeats = 8, "500,2500", 1
  return args


def _inputs(batch: int, size: int, samples: int, seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.RandomState(seed)
  teacher = rng.randn(batch, size).astype(np.float32)
  return {
      "student": jnp.asarray(rng.randn(batch, size), jnp.float32),
      "teacher": jnp.asarray(teacher),
      "mc_scores": jnp.asarray(teacher[:, None, :] + 0.3 * rng.randn(batch, samples, size),
                               jnp.float32),
      "targets": jnp.asarray(np.eye(size, dtype=np.float32)[rng.randint(0, size, batch)]),
      "mask": jnp.ones((batch, size), bool),
  }


def _measure(fn: Callable, args: tuple, repeats: int, max_run_bytes: float) -> tuple[float, float]:
  """(median seconds per call or nan if skipped, peak bytes estimate) of jit(fn)(*args)."""
  compiled = jax.jit(fn).lower(*args).compile()
  memory = compiled.memory_analysis()
  peak = float(memory.argument_size_in_bytes + memory.output_size_in_bytes
               + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  if peak > max_run_bytes:
    return float("nan"), peak
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  # Sub-millisecond calls are timed in groups so timer and dispatch noise do not dominate.
  calls = max(1, int(_MIN_SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-6)))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = compiled(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times), peak


def _cases(data: dict[str, jax.Array], block_size: int) -> dict[str, tuple[Callable, tuple]]:
  """Name -> (function of the student scores returning (loss, grad), its arguments)."""
  def with_grad(loss_fn):
    return jax.value_and_grad(lambda s, *rest: jnp.mean(loss_fn(s, *rest)))

  top_valid = data["mask"]
  points = pairwise.uncertainty_points(data["mc_scores"])
  # The student side costs the same whatever the scalings are, so a few Sinkhorn iterations
  # (not timed: that is the once-per-example cache stage) give realistic inputs.
  weights = pairwise.teacher_pair_weights(points, top_valid, strategy="ot", max_iterations=10)

  def pairwise_fn(block):
    return with_grad(lambda s, t, x, v, w: pairwise.pairwise_ranking_loss(
        s, t, x, v, w, margin=1.0, strategy="ot", block_size=block))

  pairwise_args = (data["student"], data["teacher"], points, top_valid, weights)
  rng = jax.random.key(0)
  return {
      "cross-entropy": (with_grad(lambda s, y, m: classification.classification_loss(s, y, m)),
                        (data["student"], data["targets"], data["mask"])),
      "RADI-P dense": (pairwise_fn(None), pairwise_args),
      f"RADI-P blocked ({block_size})": (pairwise_fn(block_size), pairwise_args),
      "RADI-L ListMLE": (with_grad(lambda s, t, m, k: listwise.radi_listwise_loss(
          s, t, m, k, loss="listmle")), (data["student"], data["teacher"], data["mask"], rng)),
      "RADI-L LambdaLoss-NDCG2++": (with_grad(lambda s, t, m, k: listwise.radi_listwise_loss(
          s, t, m, k, loss="lambda_ndcg2pp")), (data["student"], data["teacher"], data["mask"], rng)),
  }


def _teacher_side(args: argparse.Namespace, size: int) -> tuple[float, float, int]:
  """Cache-stage cost of RADI-P for one example: uncertainty points and the Sinkhorn solve."""
  data = _inputs(1, size, args.samples, seed=1)

  def teacher_side(mc_scores, valid):
    return pairwise.teacher_pair_weights(pairwise.uncertainty_points(mc_scores), valid)

  seconds, peak = _measure(teacher_side, (data["mc_scores"], data["mask"]), args.repeats,
                           float("inf"))
  iterations = int(jax.jit(teacher_side)(data["mc_scores"], data["mask"])["sinkhorn_iterations"][0])
  return seconds, peak, iterations


def main(argv: list[str]) -> int:
  args = _parse(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  device = jax.devices()[0]
  print(f"loss forward+backward, batch {args.batch}, T={args.samples}, "
        f"{device.platform} ({device.device_kind}), {args.repeats} timed call(s) each")
  print(f"{'loss':<28} {'N_p':>5} {'ms/call':>9} {'x CE':>7} {'peak MiB':>9}")
  start = time.perf_counter()
  for size in sizes:
    data = _inputs(args.batch, size, args.samples)
    baseline = None
    for name, (fn, fn_args) in _cases(data, args.block_size).items():
      seconds, peak = _measure(fn, fn_args, args.repeats, args.max_run_gib * 2.0 ** 30)
      baseline = seconds if baseline is None else baseline
      if np.isnan(seconds):
        timing = f"{'not run':>9} {'':>7}"
      else:
        timing = f"{1e3 * seconds:9.2f} {seconds / baseline:7.1f}"
      print(f"{name:<28} {size:>5} {timing} {peak / _MIB:9.1f}", flush=True)
    seconds, peak, iterations = _teacher_side(args, size)
    print(f"{'RADI-P teacher, 1 example':<28} {size:>5} {1e3 * seconds:9.2f} {'':>7} "
          f"{peak / _MIB:9.1f}   Sinkhorn iterations {iterations}", flush=True)
  print(f"total {time.perf_counter() - start:.0f} s")
  return 0
