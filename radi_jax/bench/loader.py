"""Examples per second of the training loader on the synth_vqa default.

``python -m radi_jax.bench loader [--data_dir DIR] [--batch_size 32] [--epochs 2] [--workers 0,2]``

Prints, from one run, the loader's examples/s for each worker count, and how many times slower it
is than iterating the same number of steps through grain with nothing to do (the loader's overhead
over grain itself).
"""

import argparse
import gc
import tempfile
import time

import grain

from radi_jax.data import config as config_lib
from radi_jax.data import make_train_loader, open_dataset


def _seconds(iterator) -> tuple[float, int]:
  start, count = time.perf_counter(), 0
  for batch in iterator:
    count += int(batch["valid"].sum()) if isinstance(batch, dict) else 1
  return time.perf_counter() - start, count


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m radi_jax.bench loader")
  parser.add_argument("--data_dir", default="", help="reuse a data_dir (default: a temporary one)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--workers", default="0,2", help="comma-separated grain worker counts")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    config = config_lib.default_config()
    config.data_dir = args.data_dir or tmp
    start = time.perf_counter()
    data = open_dataset(config)
    data.questions("train")
    print(f"open_dataset (generate + build if needed, tokenise train): "
          f"{time.perf_counter() - start:.1f} s, {data.split_sizes['train']} train questions")
    for workers in [int(w) for w in args.workers.split(",")]:
      config.worker_count = workers
      loader = make_train_loader(data, config, batch_size=args.batch_size, seed=0,
                                 num_epochs=args.epochs)
      # Grain starts its workers on the first batch; leave that out of the rate.
      first = next(loader)
      seconds, examples = _seconds(loader)
      examples_per_s = examples / seconds
      steps = loader.num_steps - 1
      bare = grain.MapDataset.range(steps).map(lambda step: step).to_iter_dataset()
      bare_seconds, _ = _seconds(bare)
      print(f"workers={workers}: {examples_per_s:,.0f} examples/s ({steps / seconds:,.0f} batches/s "
            f"of {args.batch_size}, text length {first['input_ids'].shape[1]}); "
            f"{seconds / bare_seconds:,.0f}x the time of iterating bare grain steps")
      # Workers and their shared-memory batches go before the temporary folder does.
      del loader, first
      gc.collect()
  return 0
