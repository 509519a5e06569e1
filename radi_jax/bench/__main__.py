"""Benchmarks: ``python -m radi_jax.bench {compile,losses,loader,step} [args]``.

Each benchmark prints ratios measured in one run, so the numbers hold on noisy machines.
"""

import importlib
import sys

BENCHMARKS = {
    "compile": "radi_jax.bench.compile",
    "losses": "radi_jax.bench.losses",
    "loader": "radi_jax.bench.loader",
    "step": "radi_jax.bench.step",
}


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in BENCHMARKS:
    print(f"usage: python -m radi_jax.bench {{{','.join(BENCHMARKS)}}} [args]", file=sys.stderr)
    return 2
  module = importlib.import_module(BENCHMARKS[argv[0]])
  return module.main(argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
