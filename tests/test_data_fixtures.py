"""Small raw datasets written in the FrozenBiLM layouts, and a word-level tokenizer, for data tests.

Not a test module itself: the data tests import it.
"""

import csv
import json
import os

import ml_collections
import numpy as np
import tokenizers
import transformers
from tokenizers import models, pre_tokenizers, processors

from radi_jax.data import config as config_lib

FEATURES_DIM = 8


def write_tokenizer(path: str, words: list[str]) -> str:
  """A lower-cased word-level tokenizer with [CLS] ... [SEP] around each text."""
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
  for word in sorted(set(w.lower() for w in words) | {"question", "answer", ":", "?", "."}):
    vocab.setdefault(word, len(vocab))
  tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
  return path


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def write_features(manual_dir: str, features: dict[str, np.ndarray], fmt: str) -> None:
  if fmt == "pth":
    import torch
    torch.save({k: torch.from_numpy(v) for k, v in features.items()},
               os.path.join(manual_dir, "clipvitl14.pth"))
  else:
    np.savez(os.path.join(manual_dir, "clipvitl14.npz"), **features)


def make_features(rng: np.random.Generator, frame_counts: dict[str, int],
                  dim: int = FEATURES_DIM) -> dict[str, np.ndarray]:
  return {v: rng.normal(size=(n, dim)).astype(np.float32) for v, n in frame_counts.items()}


def write_layout(manual_dir: str, splits: dict[str, list[dict]], vocab: list[str],
                 features: dict[str, np.ndarray], *, answer_columns: list[str], with_type: bool,
                 fmt: str) -> None:
  """Writes train/val/test CSVs, vocab.json and the features file."""
  os.makedirs(manual_dir, exist_ok=True)
  columns = ["video_id", "question"] + answer_columns + (["type"] if with_type else [])
  for split, rows in splits.items():
    write_csv(os.path.join(manual_dir, f"{split}.csv"), rows, columns)
  with open(os.path.join(manual_dir, "vocab.json"), "w") as f:
    json.dump({a: i for i, a in enumerate(vocab)}, f)
  write_features(manual_dir, features, fmt)


def data_config(name: str, manual_dir: str, data_dir: str, tokenizer_dir: str,
                **overrides) -> ml_collections.ConfigDict:
  config = config_lib.default_config()
  config.name = name
  config.manual_dir = manual_dir
  config.data_dir = data_dir
  config.tokenizer_dir = tokenizer_dir
  config.features_dim = FEATURES_DIM
  config.max_feats = 4
  config.max_tokens = 32
  config.bucket_lengths = (8, 16, 32)
  for key, value in overrides.items():
    config[key] = value
  return config


def tiny_synth_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A synth_vqa config small enough for unit tests."""
  config = config_lib.default_config()
  config.data_dir = data_dir
  config.features_dim = 16
  config.max_feats = 4
  config.max_tokens = 32
  config.bucket_lengths = (8, 16, 32)
  config.synth.num_categories = 4
  config.synth.concepts_per_category = 3
  config.synth.num_videos = 30
  config.synth.train_questions = 45
  config.synth.val_questions = 10
  config.synth.test_questions = 13
  config.synth.min_frames = 2
  config.synth.max_frames = 7
  for key, value in overrides.items():
    config[key] = value
  return config
