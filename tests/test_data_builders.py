"""The five FrozenBiLM-layout builders, checked example by example against the raw rows."""

import collections
import logging
import os

import numpy as np
import pytest
import transformers

from radi_jax.data import builders, make_eval_loader, open_dataset
from test_data_fixtures import make_features, write_layout, write_tokenizer, data_config

VOCAB = ["red", "blue", "green", "dog", "cat", "big dog"]
FRAME_COUNTS = {"v1": 6, "v2": 2, "v3": 4, "v4": 5, "unused": 3}
MAX_FEATS = 4

# (video_id, question, annotations, type) per split; "huge" and "purple" are outside the vocabulary.
SINGLE = {
    "train": [("v1", "what color is it", ["red"], "what"), ("v2", "which animal runs", ["dog"], "who"),
              ("v1", "is it big", ["huge"], "what"), ("v3", "what animal is shown", ["big dog"], "who"),
              ("v4", "what color is the sky?", ["blue"], "what")],
    "val": [("v2", "what is this", ["cat"], "what"), ("v3", "what color", ["purple"], "how")],
    "test": [("v4", "what color now", ["green"], "what"), ("v1", "which animal", ["cat"], "who"),
             ("v2", "what color", ["red"], "how")],
}
FIVE = {
    "train": [("v1", "what color is it", ["red", "red", "blue", "red", "crimson"], ""),
              ("v2", "which animal runs", ["dog", "big dog", "big dog", "dog", ""], ""),
              ("v1", "is it big", ["huge", "huge", "big", "dog", "huge"], ""),
              ("v3", "what animal is shown", ["cat", "", "", "", ""], "")],
    "val": [("v2", "what is this", ["cat", "dog", "cat", "cat", "purple"], ""),
            ("v3", "what color", ["purple", "purple", "purple", "purple", "purple"], "")],
    "test": [("v4", "what color now", ["green", "blue", "red", "green", "blue"], ""),
             ("v1", "which animal", ["cat", "cat", "cat", "dog", "dog"], "")],
}
IVQA_COLUMNS = [f"answer{k}" for k in range(1, 6)]
TGIF_TYPES = {"what": "0", "who": "1", "how": "10"}  # numeric types sort as numbers: 0, 1, 10

CASES = {
    # name: (rows, answer columns, with type, features format, type names as written)
    "ivqa": (FIVE, IVQA_COLUMNS, False, "pth", None),
    "activitynet_qa": (SINGLE, ["answer"], True, "npz", None),
    "msvd_qa": (SINGLE, ["answer"], True, "pth", None),
    "msrvtt_qa": (SINGLE, ["answer"], False, "npz", None),
    "tgif_frameqa": (SINGLE, ["answer"], True, "npz", TGIF_TYPES),
}


def _write_case(tmp_path, name):
  rows, columns, with_type, fmt, type_map = CASES[name]
  csv_rows = {}
  for split, items in rows.items():
    csv_rows[split] = []
    for video_id, question, annotations, type_name in items:
      row = {"video_id": video_id, "question": question}
      row.update(dict(zip(columns, annotations)))
      if with_type:
        row["type"] = type_map[type_name] if type_map else type_name
      csv_rows[split].append(row)
  features = make_features(np.random.default_rng(0), FRAME_COUNTS)
  manual_dir = str(tmp_path / "raw")
  write_layout(manual_dir, csv_rows, VOCAB, features, answer_columns=columns, with_type=with_type,
               fmt=fmt)
  words = [w for items in rows.values() for _, q, answers, _ in items for w in q.split() + answers]
  tokenizer_dir = write_tokenizer(str(tmp_path / "tok"), words + VOCAB)
  return csv_rows, features, manual_dir, tokenizer_dir


def _expected_video(frames):
  """Slow reference: FrozenBiLM's even spacing, or zero padding."""
  n = len(frames)
  video = np.zeros((MAX_FEATS, frames.shape[1]), np.float32)
  mask = np.zeros(MAX_FEATS, np.int32)
  if n > MAX_FEATS:
    for j in range(MAX_FEATS):
      video[j] = frames[(j * n) // MAX_FEATS]
    mask[:] = 1
  else:
    video[:n] = frames
    mask[:n] = 1
  return video, mask


def _collect(data, config, split):
  out = {}
  for batch in make_eval_loader(data, config, split, batch_size=2):
    for b in np.flatnonzero(batch["valid"]):
      out[int(batch["index"][b])] = {k: v[b] for k, v in batch.items()}
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_builder_examples_match_raw_rows(tmp_path, name, caplog):
  rows, columns, with_type, _, type_map = CASES[name]
  csv_rows, features, manual_dir, tokenizer_dir = _write_case(tmp_path, name)
  config = data_config(name, manual_dir, str(tmp_path / "data"), tokenizer_dir)
  with caplog.at_level(logging.INFO):
    data = open_dataset(config)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  several = len(columns) > 1

  assert data.answers == VOCAB and data.num_answers == len(VOCAB)
  raw_types = sorted({r["type"] for rs in csv_rows.values() for r in rs}, key=int) if type_map else (
      sorted({r["type"] for rs in csv_rows.values() for r in rs}) if with_type else [])
  assert data.type_names == raw_types
  assert data.num_train_index == len(csv_rows["train"])
  # The train question whose most frequent answer is "huge" is dropped, and the log says so.
  assert data.split_sizes == {"train": len(rows["train"]) - 1, "val": len(rows["val"]),
                              "test": len(rows["test"])}
  assert any("have a most frequent answer outside" in r.getMessage() and " 1 " in r.getMessage()
             for r in caplog.records)
  # Videos are stored once each, and only those a question uses.
  videos = builders.read_build(config.data_dir, name, builders.VIDEOS).info
  assert videos.splits["videos"].num_examples == 4

  for split in ("train", "val", "test"):
    got = _collect(data, config, split)
    kept = [(i, r) for i, r in enumerate(rows[split]) if not (split == "train" and r[1] == "is it big")]
    assert sorted(got) == [i for i, _ in kept]
    for i, (video_id, question, annotations, _) in kept:
      example = got[i]
      text = question[0].upper() + question[1:] + ("" if question.endswith("?") else "?")
      expected_ids = tokenizer(f"Question: {text} Answer: [MASK].")["input_ids"]
      length = len(expected_ids)
      assert example["input_ids"][:length].tolist() == expected_ids
      assert not example["input_ids"][length:].any() and example["attention_mask"].sum() == length
      assert example["input_ids"][example["mask_position"]] == tokenizer.mask_token_id
      video, mask = _expected_video(features[video_id])
      np.testing.assert_array_equal(example["video"], video)
      np.testing.assert_array_equal(example["video_mask"], mask)
      counts = collections.Counter(a for a in annotations if a)
      relevance = np.zeros(len(VOCAB), np.float32)
      for answer, count in counts.items():
        if answer in VOCAB:
          relevance[VOCAB.index(answer)] = min(1.0, count / 2) if several else 1.0
      np.testing.assert_array_equal(example["relevance"], relevance)
      top = max(counts.items(), key=lambda item: item[1])[0] if counts else None
      targets = np.zeros(len(VOCAB), np.float32)
      if top in VOCAB:
        targets[VOCAB.index(top)] = 1.0
      np.testing.assert_array_equal(example["targets"], targets)
      type_written = csv_rows[split][i].get("type", "")
      assert example["type_id"] == (raw_types.index(type_written) if with_type else -1)

  if several:
    config.train_targets = "all"
    for i, example in _collect(data, config, "train").items():
      np.testing.assert_array_equal(example["targets"], example["relevance"])
      assert example["targets"].max() > 0.0


def test_failed_build_leaves_nothing_complete_and_a_fixed_rerun_builds(tmp_path):
  csv_rows, features, manual_dir, tokenizer_dir = _write_case(tmp_path, "msvd_qa")
  data_dir = str(tmp_path / "data")
  bad = dict(features)
  bad["v3"] = np.zeros((4, 5), np.float32)
  import torch
  torch.save({k: torch.from_numpy(v) for k, v in bad.items()}, os.path.join(manual_dir, "clipvitl14.pth"))
  config = data_config("msvd_qa", manual_dir, data_dir, tokenizer_dir)
  with pytest.raises(Exception, match=r"video 'v3' has features of shape \(4, 5\)"):
    open_dataset(config)
  finished = [root for root, _, files in os.walk(data_dir) if "dataset_info.json" in files]
  assert finished == []
  torch.save({k: torch.from_numpy(v) for k, v in features.items()},
             os.path.join(manual_dir, "clipvitl14.pth"))
  data = open_dataset(config)
  assert data.split_sizes["test"] == 3
  example = _collect(data, config, "test")[0]
  np.testing.assert_array_equal(example["video"], _expected_video(features["v4"])[0])


def test_fingerprint_follows_the_data_and_changed_raw_files_are_refused(tmp_path):
  _, _, manual_dir, tokenizer_dir = _write_case(tmp_path, "msrvtt_qa")
  config = data_config("msrvtt_qa", manual_dir, str(tmp_path / "a"), tokenizer_dir)
  first = open_dataset(config)
  assert open_dataset(config).fingerprint == first.fingerprint
  config.max_feats = 3
  assert open_dataset(config).fingerprint != first.fingerprint
  with open(os.path.join(manual_dir, "test.csv"), "a") as f:
    f.write("v1,what now,red\n")
  with pytest.raises(Exception, match=r"test.csv in .* differs; expected the same raw files"):
    open_dataset(config)
  config.data_dir = str(tmp_path / "b")
  rebuilt = open_dataset(config)
  assert rebuilt.split_sizes["test"] == 4 and rebuilt.fingerprint != first.fingerprint
