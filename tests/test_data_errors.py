"""Every kind of bad raw input gives one DataError line naming the file, row or key."""

import json
import logging
import os

import numpy as np
import pytest

from radi_jax.data import DataError, open_dataset
from test_data_fixtures import (FEATURES_DIM, data_config, make_features, write_csv, write_features,
                                write_layout, write_tokenizer)

VOCAB = ["red", "blue"]


def _layout(tmp_path, questions_per_split=4, fmt="npz"):
  """A valid single-answer dataset with one video per question."""
  rows, frame_counts = {}, {}
  for split in ("train", "val", "test"):
    rows[split] = []
    for i in range(questions_per_split):
      video_id = f"{split}{i}"
      frame_counts[video_id] = 3
      rows[split].append({"video_id": video_id, "question": "what color", "answer": VOCAB[i % 2]})
  features = make_features(np.random.default_rng(0), frame_counts)
  manual_dir = str(tmp_path / "raw")
  write_layout(manual_dir, rows, VOCAB, features, answer_columns=["answer"], with_type=False, fmt=fmt)
  tokenizer_dir = write_tokenizer(str(tmp_path / "tok"), ["what", "color"] + VOCAB)
  config = data_config("msvd_qa", manual_dir, str(tmp_path / "data"), tokenizer_dir)
  return config, rows, features


def _error(config) -> str:
  with pytest.raises(DataError) as info:
    open_dataset(config)
  message = str(info.value)
  assert "\n" not in message
  # Nothing was left that a later run would take for a finished build.
  assert not [r for r, _, f in os.walk(config.data_dir) if "dataset_info.json" in f]
  return message


@pytest.mark.parametrize("filename,what", [
    ("val.csv", "missing val split"), ("vocab.json", "missing answer vocabulary"),
    ("clipvitl14.npz", "missing frame features")])
def test_missing_file(tmp_path, filename, what):
  config, _, _ = _layout(tmp_path)
  os.remove(os.path.join(config.manual_dir, filename))
  message = _error(config)
  assert message.startswith(os.path.join(config.manual_dir, filename.replace(".npz", ".pth")))
  assert what in message and "expected the FrozenBiLM layout" in message


def test_csv_without_needed_column(tmp_path):
  config, rows, _ = _layout(tmp_path)
  path = os.path.join(config.manual_dir, "test.csv")
  write_csv(path, [{"video_id": r["video_id"], "question": r["question"]} for r in rows["test"]],
            ["video_id", "question"])
  message = _error(config)
  assert message == (f"{path}: missing column(s) answer; expected columns video_id, question, answer "
                     "(and optionally type), found video_id, question")


def test_empty_question(tmp_path):
  config, rows, _ = _layout(tmp_path)
  rows["train"][2]["question"] = "  "
  path = os.path.join(config.manual_dir, "train.csv")
  write_csv(path, rows["train"], ["video_id", "question", "answer"])
  assert _error(config) == (f"{path}: row 2 (line 4): empty question; expected text in column "
                            "'question'")


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_features_of_wrong_dimension(tmp_path, fmt):
  config, _, features = _layout(tmp_path, fmt=fmt)
  features["val1"] = np.ones((3, FEATURES_DIM + 1), np.float32)
  write_features(config.manual_dir, features, fmt)
  message = _error(config)
  assert message == (f"{os.path.join(config.manual_dir, 'clipvitl14.' + fmt)}: video 'val1' has "
                     f"features of shape (3, {FEATURES_DIM + 1}); expected (frames >= 1, {FEATURES_DIM})")


def test_too_many_videos_without_features(tmp_path):
  config, _, features = _layout(tmp_path)
  del features["test1"]
  write_features(config.manual_dir, features, "npz")
  message = _error(config)
  assert message == (
      f"{os.path.join(config.manual_dir, 'test.csv')}: 1 of 4 questions refer to video ids with no "
      f"features in {os.path.join(config.manual_dir, 'clipvitl14.npz')} (first: row 1, video_id "
      "'test1'); expected at most 5%")


def test_few_videos_without_features_are_dropped_with_a_warning(tmp_path, caplog):
  config, _, features = _layout(tmp_path, questions_per_split=25)
  del features["test7"]
  write_features(config.manual_dir, features, "npz")
  with caplog.at_level(logging.WARNING):
    data = open_dataset(config)
  assert data.split_sizes == {"train": 25, "val": 25, "test": 24}
  assert any("dropped 1 of 25 questions whose video has no features" in r.getMessage()
             for r in caplog.records if r.levelno == logging.WARNING)


def test_bad_vocabulary(tmp_path):
  config, _, _ = _layout(tmp_path)
  path = os.path.join(config.manual_dir, "vocab.json")
  with open(path, "w") as f:
    json.dump({"red": 0, "blue": "one"}, f)
  assert _error(config) == f"{path}: key 'blue' maps to 'one'; expected an integer id"


def test_missing_tokenizer_and_unknown_name(tmp_path):
  config, _, _ = _layout(tmp_path)
  config.name = "msvd"
  assert _error(config).startswith("data.name='msvd': expected one of synth_vqa, ivqa")
  config.name = "msvd_qa"
  config.tokenizer_dir = ""
  assert "data.tokenizer_dir: empty" in _error(config)
  config.tokenizer_dir = str(tmp_path / "nowhere")
  assert _error(config) == (f"data.tokenizer_dir={config.tokenizer_dir!r}: not a directory; expected "
                            "a local Hugging Face tokenizer directory (nothing is downloaded)")


def test_an_error_after_a_build_keeps_the_build(tmp_path):
  config, rows, _ = _layout(tmp_path)
  data = open_dataset(config)
  rows["val"][0]["question"] = ""
  write_csv(os.path.join(config.manual_dir, "val.csv"), rows["val"], ["video_id", "question", "answer"])
  with pytest.raises(DataError, match="val.csv in .* differs"):
    open_dataset(config)
  built = [r for r, _, f in os.walk(config.data_dir) if "dataset_info.json" in f]
  assert len(built) == 2 and data.split_sizes["val"] == 4


def test_csv_that_is_not_utf8(tmp_path):
  config, _, _ = _layout(tmp_path)
  path = os.path.join(config.manual_dir, "train.csv")
  with open(path, "wb") as f:
    f.write(b"video_id,question,answer\ntrain0,what \xff color,red\n")
  assert _error(config) == f"{path}: byte 37 is not UTF-8; expected a UTF-8 CSV file"
