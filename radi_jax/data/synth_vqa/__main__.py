"""``python -m radi_jax.data.synth_vqa --out DIR [--seed 0 --num_videos 1200 ...]``."""

import argparse
import sys

import ml_collections

from radi_jax.data import config as config_lib
from radi_jax.data.synth_vqa import write


def main(argv: list[str]) -> int:
  defaults = config_lib.synth_config()
  parser = argparse.ArgumentParser(prog="python -m radi_jax.data.synth_vqa",
                                   description="Writes synth_vqa in the iVQA layout.")
  parser.add_argument("--out", required=True, help="new folder to write the dataset to")
  parser.add_argument("--features_dim", type=int, default=768, help="dimension of a frame feature")
  for key, value in defaults.items():
    parser.add_argument(f"--{key}", type=type(value), default=value, help=f"default {value}")
  args = parser.parse_args(argv)
  synth = ml_collections.ConfigDict({k: getattr(args, k) for k in defaults})
  try:
    write(args.out, synth, args.features_dim)
  except (FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote synth_vqa to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
