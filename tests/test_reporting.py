"""Tests for radi_jax.training.reporting: history, plots, report, TensorBoard events, progress."""

import json
import os
import struct

import pytest

from radi_jax.training import reporting


# ---------------------------------------------------------------------------------------------
# A reader of TensorBoard event files written from the file-format definitions (TFRecord framing,
# masked CRC32C, protobuf wire format), independent of tensorboardX's own code.


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = buffer[position]
    position += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, position


def _fields(message: bytes):
  """Yields (field number, wire type, value) of a protobuf message."""
  position = 0
  while position < len(message):
    key, position = _varint(message, position)
    number, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, position = _varint(message, position)
    elif wire_type == 1:
      value, position = message[position:position + 8], position + 8
    elif wire_type == 2:
      length, position = _varint(message, position)
      value, position = message[position:position + length], position + length
    elif wire_type == 5:
      value, position = message[position:position + 4], position + 4
    else:
      raise AssertionError(f"unexpected wire type {wire_type}")
    yield number, wire_type, value


def _read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an event file, checking every record's CRCs."""
  data = open(path, "rb").read()
  scalars, position = [], 0
  while position < len(data):
    header = data[position:position + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[position + 8:position + 12])
    assert header_crc == _masked_crc(header)
    record = data[position + 12:position + 12 + length]
    (record_crc,) = struct.unpack("<I", data[position + 12 + length:position + 16 + length])
    assert record_crc == _masked_crc(record)
    position += 16 + length
    step, summary = 0, None
    for number, _, value in _fields(record):  # Event: 2 = step, 5 = summary
      if number == 2:
        step = value
      elif number == 5:
        summary = value
    if summary is None:
      continue
    for number, _, value in _fields(summary):  # Summary: 1 = repeated Value
      if number != 1:
        continue
      tag, simple_value = None, None
      for field, _, content in _fields(value):  # Value: 1 = tag, 2 = simple_value (float)
        if field == 1:
          tag = content.decode()
        elif field == 2:
          (simple_value,) = struct.unpack("<f", content)
      scalars.append((step, tag, simple_value))
  return scalars


def test_metric_writer_event_file_holds_the_scalars(tmp_path):
  logdir = tmp_path / "tb"
  writer = reporting.MetricWriter(str(logdir))
  writer.scalars(1, {"train/loss": 2.5, "train/lr": 1e-4})
  writer.scalars(10, {"train/loss": 0.75, "val/acc1": 0.375})
  writer.close()
  files = [name for name in os.listdir(logdir) if name.startswith("events.out.tfevents")]
  assert len(files) == 1
  scalars = _read_scalars(str(logdir / files[0]))
  assert sorted(scalars) == sorted([(1, "train/loss", 2.5), (1, "train/lr", pytest.approx(1e-4)),
                                    (10, "train/loss", 0.75), (10, "val/acc1", 0.375)])

  disabled = tmp_path / "off"
  writer = reporting.MetricWriter(str(disabled), enabled=False)
  writer.scalars(1, {"train/loss": 1.0})
  writer.close()
  assert not disabled.exists()


# ---------------------------------------------------------------------------------------------


def test_history_round_trip_and_resumed_epoch_replaced(tmp_path):
  path = str(tmp_path / "teacher" / "history.jsonl")
  assert reporting.read_history(path) == []
  records = [{"epoch": epoch, "train/loss": 2.0 / epoch, "val/acc1": 0.1 * epoch,
              "val/hit5": 0.2 * epoch, "val/ndcg5": 0.15 * epoch} for epoch in (1, 2, 3)]
  for record in records:
    reporting.append_history(path, record)
  assert reporting.read_history(path) == records
  # One JSON object per line, readable without this module.
  lines = open(path).read().splitlines()
  assert [json.loads(line) for line in lines] == records
  # A resumed run that redoes epoch 3 replaces it.
  redone = dict(records[2], **{"val/acc1": 0.33})
  reporting.append_history(path, redone)
  assert reporting.read_history(path) == records[:2] + [redone]
  assert [name for name in os.listdir(tmp_path / "teacher")] == ["history.jsonl"]  # no temp left


def test_read_history_names_file_and_line_of_a_bad_record(tmp_path):
  path = tmp_path / "history.jsonl"
  path.write_text('{"epoch": 1}\n{"epoch": 2, "train/loss": \n')
  with pytest.raises(reporting.HistoryError, match=r"history.jsonl line 2: expected one JSON"):
    reporting.read_history(str(path))
  # Appending refuses too, leaving the file as it was.
  with pytest.raises(reporting.HistoryError):
    reporting.append_history(str(path), {"epoch": 3})
  assert path.read_text() == '{"epoch": 1}\n{"epoch": 2, "train/loss": \n'


def test_plot_history_writes_a_png(tmp_path):
  history = [{"epoch": epoch, "train/loss": 3.0 / epoch, "val/loss": 3.2 / epoch,
              "val/acc1": 0.3 + 0.02 * epoch, "val/hit5": 0.5 + 0.03 * epoch,
              "val/ndcg5": 0.4 + 0.025 * epoch} for epoch in range(1, 6)]
  history.append({"epoch": 5.5, "train/loss": 0.5})  # mid-epoch record without validation
  out = str(tmp_path / "plots" / "student_radi_p.png")
  reporting.plot_history(history, out, "student (RADI-P)")
  data = open(out, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert (width, height) == (1000, 400)
  assert len(data) > 20_000  # axes, four lines, legends and text, not a blank canvas


# ---------------------------------------------------------------------------------------------

_RESULTS = {
    "teacher": {
        "val": {"acc1": 0.405, "hit5": 0.645, "ndcg5": 0.496},
        "test": {"acc1": 0.396, "hit5": 0.64, "ndcg5": 0.49,
                 "per_type": {"color": 0.5, "count": 0.25}},
    },
    "student_radi_p": {
        "val": {"acc1": 0.432, "hit5": 0.683, "ndcg5": 0.527},
        "test": {"acc1": 0.435, "hit5": 0.6725, "ndcg5": 0.5, "per_type": {"color": 0.625}},
    },
    "student_radi_l": {"test": {"acc1": 0.429, "hit5": 0.686, "ndcg5": 0.4875}},
}


def test_report_tables_differences_types_and_plot_links(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "teacher").mkdir(parents=True)
  (workdir / "teacher" / "history.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  json_path, markdown_path = reporting.write_report(
      str(workdir), _RESULTS, config_summary={"dataset": "synth_vqa", "alpha": 10})
  assert (json_path, markdown_path) == (str(workdir / "report.json"), str(workdir / "report.md"))
  assert json.load(open(json_path)) == {"results": _RESULTS,
                                        "config_summary": {"dataset": "synth_vqa", "alpha": 10}}
  markdown = open(markdown_path).read()
  lines = markdown.splitlines()
  # Results per split, in %, two decimals.
  val = lines.index("### val")
  assert lines[val + 2] == "| run | Acc@1 | Hit@5 | nDCG@5 |"
  assert "| teacher | 40.50 | 64.50 | 49.60 |" in lines
  assert "| student_radi_p | 43.20 | 68.30 | 52.70 |" in lines
  assert "| teacher | 39.60 | 64.00 | 49.00 |" in lines
  assert "| student_radi_p | 43.50 | 67.25 | 50.00 |" in lines
  assert "| student_radi_l | 42.90 | 68.60 | 48.75 |" in lines
  # Student minus teacher, percentage points.
  differences = lines[lines.index("## Student minus teacher"):]
  assert "| student_radi_p | +2.70 | +3.80 | +3.10 |" in differences   # val
  assert "| student_radi_p | +3.90 | +3.25 | +1.00 |" in differences   # test
  assert "| student_radi_l | +3.30 | +4.60 | -0.25 |" in differences   # test
  assert sum(line.startswith("| student_radi_l") for line in differences) == 1  # no val
  # Per-type accuracy, a dash where a run has no value.
  types = lines[lines.index("## Acc@1 per question type"):]
  assert "| run | color | count |" in types
  assert "| teacher | 50.00 | 25.00 |" in types
  assert "| student_radi_p | 62.50 | – |" in types
  assert "![teacher/history.png](teacher/history.png)" in lines
  assert "| alpha | `10` |" in lines

  console = reporting.format_results_table(_RESULTS).splitlines()
  assert console[0].split() == ["run", "val", "Acc@1", "val", "Hit@5", "val", "nDCG@5",
                                "test", "Acc@1", "test", "Hit@5", "test", "nDCG@5"]
  assert console[2].split() == ["teacher", "40.50", "64.50", "49.60", "39.60", "64.00", "49.00"]
  assert console[4].split() == ["student_radi_l", "–", "–", "–", "42.90", "68.60", "48.75"]


def test_progress_bar_shows_step_loss_and_throughput(capsys):
  bar = reporting.ProgressBar("student", total_steps=20, initial_step=5)
  for step in range(6, 21):
    bar.update(step, loss=0.123, examples=32)
  bar.close()
  shown = capsys.readouterr().err
  assert "student" in shown and "20/20" in shown and "loss=0.1230" in shown and "ex/s=" in shown

  quiet = reporting.ProgressBar("teacher", total_steps=3, enabled=False)
  quiet.update(1, loss=1.0, examples=4)
  quiet.close()
  assert capsys.readouterr().err == ""
