"""What the user sees of a run: progress bar, TensorBoard scalars, epoch history, plots, report.

Metric values are fractions in [0, 1] everywhere in the code; the report, the console table and the
plots show them as percentages, as the paper does. The metric keys are ``acc1``, ``hit5`` and
``ndcg5`` (history records prefix them with the split: ``val/acc1``).

Files (history, plots, report) are written to a temporary file and renamed into place, so a run
killed while writing leaves the previous version intact.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Iterable

import jax
import numpy as np
import tqdm

# (key in results / history, column title), in the order of the paper's tables.
METRICS = (("acc1", "Acc@1"), ("hit5", "Hit@5"), ("ndcg5", "nDCG@5"))
TEACHER_RUN = "teacher"
_SPLIT_ORDER = ("val", "test")


class HistoryError(Exception):
  """A history file that cannot be read; the message is one line naming the file and line."""


def _is_main_process() -> bool:
  return jax.process_index() == 0


class ProgressBar:
  """A progress bar for one stage: step/total, loss, examples per second and ETA, on stderr.

  Only JAX process 0 draws it, so a multi-host run shows one bar.

  Args:
    stage: the stage name shown in front of the bar (``'teacher'``, ``'student'``...).
    total_steps: steps of the whole stage.
    initial_step: the step a resumed run starts from; the ETA counts only steps run now.
    enabled: False hides the bar (e.g. under a test or with logging to files only).
  """

  def __init__(self, stage: str, total_steps: int, initial_step: int = 0, enabled: bool = True):
    # Redirected to a log file, a bar redrawn ten times a second would bloat it; redraw rarely.
    interactive = sys.stderr.isatty()
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=stage, unit="step",
                          file=sys.stderr, dynamic_ncols=True, leave=True,
                          mininterval=0.1 if interactive else 30.0,
                          disable=not (enabled and _is_main_process()))
    self._step = initial_step
    # Throughput counts from the first update on: the time before it is mostly compilation.
    self._rate_start: float | None = None
    self._rate_examples = 0

  def update(self, step: int, *, loss: float, examples: int) -> None:
    """Moves the bar to ``step``.

    Args:
      step: the global step just finished.
      loss: the training loss to show.
      examples: examples processed since the previous update (global, all processes).
    """
    now = time.perf_counter()
    if self._rate_start is None:
      self._rate_start = now
    else:
      self._rate_examples += examples
    elapsed = now - self._rate_start
    postfix = {"loss": f"{float(loss):.4f}"}
    if elapsed > 0 and self._rate_examples:
      postfix["ex/s"] = f"{self._rate_examples / elapsed:.1f}"
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._step)
    self._step = step

  def close(self) -> None:
    self._bar.close()


class MetricWriter:
  """Scalars for TensorBoard (tensorboardX event files; TensorFlow is not needed).

  Only JAX process 0 writes; on the others, and with ``enabled=False``, every call does nothing.

  Args:
    logdir: directory of the event files (one per stage is usual: ``<workdir>/<stage>/tb``).
    enabled: False turns the writer into a no-op.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self._writer = None
    if enabled and _is_main_process():
      # Imported here so that processes that never write do not load it.
      import tensorboardX  # pylint: disable=import-outside-toplevel
      self._writer = tensorboardX.SummaryWriter(logdir=os.fspath(logdir))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """Records ``values`` (tag -> number, e.g. ``{'train/loss': 0.7}``) at ``step``."""
    if self._writer is None:
      return
    for tag, value in values.items():
      self._writer.add_scalar(tag, float(value), global_step=int(step))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)) and np.ndim(value) == 0:
    return np.asarray(value).item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _atomic_write(path: str, write: Any, mode: str = "w") -> None:
  """Writes through ``write(file)`` to a temporary sibling, then renames it over ``path``."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    # mkstemp makes the file private; keep the permissions an ordinary open() would give.
    os.chmod(temporary, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
    with os.fdopen(handle, mode) as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def read_history(path: str) -> list[dict]:
  """Reads a JSON-lines history; a missing file is an empty history.

  Raises:
    HistoryError: a line that is not a JSON object.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as file:
    for number, line in enumerate(file, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise HistoryError(f"{path} line {number}: expected one JSON object per line "
                           f"({error.msg})") from None
      if not isinstance(record, dict):
        raise HistoryError(f"{path} line {number}: expected a JSON object, got "
                           f"{type(record).__name__}")
      records.append(record)
  return records


def append_history(path: str, record: dict) -> None:
  """Adds one per-epoch record (``{'epoch': 3, 'train/loss': 0.8, 'val/acc1': 0.41, ...}``).

  A record whose ``epoch`` is already in the file replaces that record: a resumed run that redoes
  an epoch does not list it twice.
  """
  records = read_history(path)
  epoch = record.get("epoch")
  if epoch is not None:
    records = [old for old in records if old.get("epoch") != epoch]
  records.append(dict(record))
  if epoch is not None and all(old.get("epoch") is not None for old in records):
    records.sort(key=lambda old: old["epoch"])
  text = "".join(json.dumps(old, default=_json_default) + "\n" for old in records)
  _atomic_write(path, lambda file: file.write(text))


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
  points = [(record.get("epoch", index), record[key]) for index, record in enumerate(history)
            if record.get(key) is not None and math.isfinite(float(record[key]))]
  return [float(epoch) for epoch, _ in points], [float(value) for _, value in points]


def plot_history(history: list[dict], out_png: str, title: str) -> None:
  """Draws loss per epoch (left) and validation Acc@1 / Hit@5 / nDCG@5 in % (right) to a PNG.

  Args:
    history: records as written by `append_history`; keys ``train/loss`` (and ``val/loss`` if
      present) and ``val/acc1``, ``val/hit5``, ``val/ndcg5``. Missing keys are left out.
    out_png: the file to write.
    title: the figure title, e.g. ``'student (RADI-P)'``.
  """
  # The object API with an Agg canvas keeps pyplot's global figure registry out of the library.
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator
  # pylint: enable=import-outside-toplevel

  figure = Figure(figsize=(10, 4), dpi=100)
  FigureCanvasAgg(figure)
  loss_axes, metric_axes = figure.subplots(1, 2)
  for key, label in (("train/loss", "train"), ("val/loss", "val")):
    epochs, values = _series(history, key)
    if epochs:
      loss_axes.plot(epochs, values, marker="o", label=label)
  loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
  for key, label in METRICS:
    epochs, values = _series(history, f"val/{key}")
    if epochs:
      metric_axes.plot(epochs, [100 * value for value in values], marker="o", label=label)
  metric_axes.set(xlabel="epoch", ylabel="%", title="validation")
  for axes in (loss_axes, metric_axes):
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes.get_legend_handles_labels()[0]:
      axes.legend()
  figure.suptitle(title)
  figure.tight_layout()
  _atomic_write(out_png, lambda file: figure.savefig(file, format="png"), mode="wb")


def _splits(results: dict) -> list[str]:
  present = {split for run in results.values() for split in run}
  return [split for split in _SPLIT_ORDER if split in present] + sorted(present - set(_SPLIT_ORDER))


def _percent(value: Any) -> str:
  return "–" if value is None else f"{100 * float(value):.2f}"


def _signed_percent(value: float) -> str:
  return f"{100 * value:+.2f}"


def format_results_table(results: dict) -> str:
  """A plain-text table for the console: one row per run, Acc@1 / Hit@5 / nDCG@5 (%) per split.

  Args:
    results: ``{run: {split: {'acc1': float, 'hit5': float, 'ndcg5': float, ...}}}``.
  """
  splits = _splits(results)
  header = ["run"] + [f"{split} {title}" for split in splits for _, title in METRICS]
  rows = [[run] + [_percent(results[run].get(split, {}).get(key)) for split in splits
                   for key, _ in METRICS] for run in results]
  widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]

  def line(cells: list[str]) -> str:
    return "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                     for column, (cell, width) in enumerate(zip(cells, widths)))

  return "\n".join([line(header), "  ".join("-" * width for width in widths)] +
                   [line(row) for row in rows])


def _markdown_table(header: list[str], rows: Iterable[list[str]],
                    numeric: bool = True) -> list[str]:
  """Markdown table lines; with ``numeric`` every column after the first is right-aligned."""
  alignment = "---:" if numeric else "---"
  return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [alignment] *
                                                              (len(header) - 1)) + "|"] +
          ["| " + " | ".join(row) + " |" for row in rows])


def _report_markdown(workdir: str, results: dict, config_summary: dict | None) -> str:
  splits = _splits(results)
  titles = [title for _, title in METRICS]
  lines = ["# Report", "",
           "Metrics in %: Acc@1, Hit@5 and nDCG@5 as in the RADI paper (CVPR 2024).", ""]
  if config_summary:
    lines += ["## Configuration", ""]
    lines += _markdown_table(["key", "value"],
                             [[str(key), f"`{value}`"] for key, value in config_summary.items()],
                             numeric=False)
    lines.append("")

  lines += ["## Results", ""]
  for split in splits:
    lines += [f"### {split}", ""]
    lines += _markdown_table(["run"] + titles, [
        [run] + [_percent(results[run][split].get(key)) for key, _ in METRICS]
        for run in results if split in results[run]])
    lines.append("")

  teacher = results.get(TEACHER_RUN, {})
  students = [run for run in results if run != TEACHER_RUN]
  difference_rows = {}
  for split in splits:
    rows = []
    for run in students:
      if split in teacher and split in results[run]:
        rows.append([run] + [
            _signed_percent(float(results[run][split][key]) - float(teacher[split][key]))
            if results[run][split].get(key) is not None and teacher[split].get(key) is not None
            else "–" for key, _ in METRICS])
    if rows:
      difference_rows[split] = rows
  if difference_rows:
    lines += ["## Student minus teacher", "",
              "Percentage points; positive means the student is better.", ""]
    for split, rows in difference_rows.items():
      lines += [f"### {split}", ""]
      lines += _markdown_table(["run"] + [f"Δ {title}" for title in titles], rows)
      lines.append("")

  type_tables = []
  for split in splits:
    runs = [run for run in results if results[run].get(split, {}).get("per_type")]
    if not runs:
      continue
    types = sorted({kind for run in runs for kind in results[run][split]["per_type"]})
    type_tables += [f"### {split}", ""]
    type_tables += _markdown_table(["run"] + types, [
        [run] + [_percent(results[run][split]["per_type"].get(kind)) for kind in types]
        for run in runs])
    type_tables.append("")
  if type_tables:
    lines += ["## Acc@1 per question type", ""] + type_tables

  plots = []
  for root, _, files in os.walk(workdir):
    for name in files:
      if name.endswith(".png"):
        plots.append(os.path.relpath(os.path.join(root, name), workdir).replace(os.sep, "/"))
  if plots:
    lines += ["## Plots", ""]
    for plot in sorted(plots):
      lines += [f"![{plot}]({plot})", ""]
  return "\n".join(lines).rstrip() + "\n"


def write_report(workdir: str,
                 results: dict,
                 *,
                 config_summary: dict | None = None) -> tuple[str, str]:
  """Writes ``report.json`` and ``report.md`` into ``workdir``.

  ``report.json`` holds ``{'results': results, 'config_summary': config_summary}``. ``report.md``
  holds, per split, a table of every run's Acc@1 / Hit@5 / nDCG@5 as percentages with two
  decimals; the students' differences to the ``teacher`` run in percentage points (signed, e.g.
  ``+1.20``); per-type Acc@1 tables where results carry ``per_type``; and links to every PNG
  under ``workdir``.

  Args:
    workdir: the run's directory.
    results: ``{run: {split: {'acc1': .., 'hit5': .., 'ndcg5': .., 'per_type': {type: acc1}}}}``
      with fractions in [0, 1]; run names such as ``'teacher'``, ``'student_radi_p'``.
    config_summary: a few flat ``key: value`` pairs describing the run (dataset, alpha...).

  Returns:
    ``(json_path, markdown_path)``.
  """
  json_path = os.path.join(workdir, "report.json")
  markdown_path = os.path.join(workdir, "report.md")
  payload = json.dumps({"results": results, "config_summary": config_summary}, indent=2,
                       default=_json_default)
  _atomic_write(json_path, lambda file: file.write(payload + "\n"))
  markdown = _report_markdown(workdir, results, config_summary)
  _atomic_write(markdown_path, lambda file: file.write(markdown))
  return json_path, markdown_path
