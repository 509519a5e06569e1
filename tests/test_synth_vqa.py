"""synth_vqa: deterministic, in the iVQA layout, with synonyms as correct answers and a real signal."""

import collections
import csv
import filecmp
import json
import os

import numpy as np
import pytest
import transformers

from radi_jax.data import config as config_lib
from radi_jax.data import synth_vqa
from radi_jax.data.synth_vqa.__main__ import main as synth_main


def _small(seed=0):
  synth = config_lib.synth_config()
  synth.seed = seed
  synth.num_videos, synth.train_questions, synth.val_questions, synth.test_questions = 60, 90, 20, 30
  return synth


def test_same_seed_same_files_other_seed_other_files(tmp_path):
  synth_vqa.write(str(tmp_path / "a"), _small(0), features_dim=32)
  synth_vqa.write(str(tmp_path / "b"), _small(0), features_dim=32)
  synth_vqa.write(str(tmp_path / "c"), _small(1), features_dim=32)
  names = ["train.csv", "val.csv", "test.csv", "vocab.json", "tokenizer/tokenizer.json"]
  match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
  assert match == names and not mismatch and not errors
  a, b = np.load(tmp_path / "a" / "clipvitl14.npz"), np.load(tmp_path / "b" / "clipvitl14.npz")
  assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
  assert not filecmp.cmp(tmp_path / "a" / "train.csv", tmp_path / "c" / "train.csv", shallow=False)
  with pytest.raises(FileExistsError):
    synth_vqa.write(str(tmp_path / "a"), _small(0))


def test_default_dataset_has_the_intended_structure():
  synth = config_lib.synth_config()
  dataset = synth_vqa.generate(synth)
  answers = dataset["answers"]
  assert 200 <= len(answers) <= 500 and len(set(answers)) == len(answers)
  sizes = {s: len(r) for s, r in dataset["splits"].items()}
  assert sizes == {"train": 2000, "val": 300, "test": 500}
  synonyms = dataset["surface_answers"]
  assert {len(s) for s in synonyms} == {1, 2, 3, 4} and any(" " in a for a in answers)
  frame_counts = [len(f) for f in dataset["features"].values()]
  assert min(frame_counts) < 10 < max(frame_counts)
  per_category = synth.concepts_per_category
  distinct = []
  for split, rows in dataset["splits"].items():
    split_videos = {r["video_id"] for r in rows}
    for other, other_rows in dataset["splits"].items():
      if other != split:
        assert not split_videos & {r["video_id"] for r in other_rows}
    for row in rows:
      scene = dataset["scenes"][row["video_id"]]
      assert 2 <= len(scene) <= 4
      assert len({c // per_category for c in scene}) == len(scene)  # different categories
      picked = [row[f"answer{k}"] for k in range(1, 6)]
      # The five annotations are synonyms of the scene concept whose category the question names.
      concept = [c for c in scene if dataset["categories"][c // per_category] == row["type"]]
      assert len(concept) == 1 and row["type"] in row["question"]
      assert set(picked) <= set(synonyms[concept[0]])
      distinct.append(len(set(picked)))
  # Several correct answers are annotated for many questions, and the labeled one is usually the
  # most popular synonym.
  assert np.mean(np.array(distinct) > 1) > 0.3


def test_answer_is_recoverable_from_video_and_category():
  """Nearest concept of the asked category to the mean frame finds the answer: the task is learnable."""
  synth = config_lib.synth_config()
  dataset = synth_vqa.generate(synth)
  per_category = synth.concepts_per_category
  correct = []
  for row in dataset["splits"]["test"]:
    category = dataset["categories"].index(row["type"])
    candidates = np.arange(category * per_category, (category + 1) * per_category)
    mean_frame = dataset["features"][row["video_id"]].mean(0)
    guess = candidates[np.argmax(dataset["embeddings"][candidates] @ mean_frame)]
    correct.append(row["answer1"] in dataset["surface_answers"][guess])
  assert np.mean(correct) > 0.95


def test_cli_writes_the_ivqa_layout_and_a_loadable_tokenizer(tmp_path, capsys):
  out = str(tmp_path / "synth")
  assert synth_main(["--out", out, "--seed", "4", "--num_videos", "40", "--train_questions", "50",
                         "--val_questions", "10", "--test_questions", "10", "--features_dim", "24"]) == 0
  assert sorted(os.listdir(out)) == ["clipvitl14.npz", "test.csv", "tokenizer", "train.csv",
                                     "val.csv", "vocab.json"]
  with open(os.path.join(out, "train.csv")) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["video_id", "question", "answer1", "answer2", "answer3", "answer4",
                           "answer5", "type"] and len(rows) == 50
  with open(os.path.join(out, "vocab.json")) as f:
    vocab = json.load(f)
  assert sorted(vocab.values()) == list(range(len(vocab)))
  features = np.load(os.path.join(out, "clipvitl14.npz"))
  assert {r["video_id"] for r in rows} <= set(features.files)
  assert all(features[k].shape[1] == 24 and features[k].dtype == np.float32 for k in features.files)
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
  texts = [f"Question: {r['question']}? Answer: [MASK]." for r in rows] + list(vocab)
  for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
    assert tokenizer.unk_token_id not in ids
  assert tokenizer("Answer: [MASK].")["input_ids"][0] == tokenizer.cls_token_id
  assert synth_main(["--out", out]) == 1 and "exists" in capsys.readouterr().err


def test_open_dataset_generates_the_same_data_for_a_seed(tmp_path):
  from radi_jax.data import open_dataset
  from test_data_fixtures import tiny_synth_config
  first = open_dataset(tiny_synth_config(str(tmp_path / "a")))
  again = open_dataset(tiny_synth_config(str(tmp_path / "b")))
  other_config = tiny_synth_config(str(tmp_path / "a"))
  other_config.synth.seed = 1
  other = open_dataset(other_config)
  assert first.fingerprint == again.fingerprint != other.fingerprint
  assert first.answers == again.answers and first.split_sizes == again.split_sizes
  np.testing.assert_array_equal(first.questions("train").index, again.questions("train").index)
  # The generated tokenizer is the one loaded, and every answer is made of known words.
  ids = first.tokenizer(first.answers, add_special_tokens=False)["input_ids"]
  assert all(first.tokenizer.unk_token_id not in t for t in ids)
