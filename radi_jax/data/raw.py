"""Reads a dataset folder in the FrozenBiLM layout and checks it.

Layout (DESIGN §6): ``train.csv``, ``val.csv``, ``test.csv`` with columns ``video_id``, ``question``,
``answer`` (or ``answer1`` ... ``answer5`` for iVQA) and an optional ``type``; ``vocab.json`` mapping
answer -> id; frame features ``clipvitl14.pth`` (a dict video_id -> (frames, dim) tensor) or
``clipvitl14.npz`` with the same keys. Everything wrong with these files becomes a one-line
:class:`DataError`.
"""

import collections
import csv
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from radi_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
VOCAB_FILE = "vocab.json"
FEATURE_FILES = ("clipvitl14.pth", "clipvitl14.npz")
# Share of a split's questions that may point at videos without features before the build stops.
MAX_MISSING_VIDEO_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What distinguishes one FrozenBiLM-layout dataset from another.

  Attributes:
    name: TFDS name of the dataset.
    answer_columns: CSV columns holding the annotations of a question.
  """
  name: str
  answer_columns: tuple[str, ...]

  @property
  def num_annotations(self) -> int:
    return len(self.answer_columns)


IVQA_ANSWER_COLUMNS = tuple(f"answer{k}" for k in range(1, 6))
DATASET_FACTS = {
    "synth_vqa": DatasetFacts("synth_vqa", IVQA_ANSWER_COLUMNS),
    "ivqa": DatasetFacts("ivqa", IVQA_ANSWER_COLUMNS),
    "activitynet_qa": DatasetFacts("activitynet_qa", ("answer",)),
    "msvd_qa": DatasetFacts("msvd_qa", ("answer",)),
    "msrvtt_qa": DatasetFacts("msrvtt_qa", ("answer",)),
    "tgif_frameqa": DatasetFacts("tgif_frameqa", ("answer",)),
}


@dataclasses.dataclass(frozen=True)
class RawQuestion:
  """One CSV row.

  Attributes:
    index: 0-based data row in the split's CSV; the stable example index.
    video_id: key into the features file.
    question: question text as written.
    annotations: non-empty answer cells, in column order.
    type_name: the ``type`` cell, '' when the CSV has no type column.
  """
  index: int
  video_id: str
  question: str
  annotations: tuple[str, ...]
  type_name: str


def annotation_counts(annotations: tuple[str, ...]) -> list[tuple[str, int]]:
  """Distinct answers with how many annotators gave each, in order of first appearance."""
  return list(collections.Counter(annotations).items())


def most_frequent_answer(annotations: tuple[str, ...]) -> str | None:
  """The answer most annotators gave; ties go to the one that appears first. None if no answers."""
  counts = annotation_counts(annotations)
  if not counts:
    return None
  # max() keeps the first of equal counts, and Counter keeps first-appearance order.
  return max(counts, key=lambda item: item[1])[0]


def _require_file(manual_dir: str, filename: str, what: str) -> str:
  path = os.path.join(manual_dir, filename)
  if not os.path.isfile(path):
    raise DataError(f"{path}: missing {what} (expected the FrozenBiLM layout: train.csv, val.csv, "
                    f"test.csv, {VOCAB_FILE}, {' or '.join(FEATURE_FILES)})")
  return path


def read_vocab(manual_dir: str) -> list[str]:
  """Reads ``vocab.json``.

  Returns:
    The answers in id order.
  """
  path = _require_file(manual_dir, VOCAB_FILE, "answer vocabulary")
  try:
    with open(path, encoding="utf-8") as f:
      vocab = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e}); expected an object answer -> id") from None
  if not isinstance(vocab, dict) or not vocab:
    raise DataError(f"{path}: expected a non-empty JSON object mapping answer -> integer id")
  for answer, answer_id in vocab.items():
    if not isinstance(answer_id, int) or isinstance(answer_id, bool):
      raise DataError(f"{path}: key {answer!r} maps to {answer_id!r}; expected an integer id")
  ids = sorted(vocab.values())
  if ids != list(range(len(ids))):
    raise DataError(f"{path}: ids must be 0..{len(ids) - 1}, each used once; got {len(set(ids))} "
                    f"distinct ids from {ids[0]} to {ids[-1]}")
  answers = [""] * len(ids)
  for answer, answer_id in vocab.items():
    answers[answer_id] = answer
  return answers


def read_split(manual_dir: str, split: str, facts: DatasetFacts) -> list[RawQuestion]:
  """Reads ``<split>.csv`` and checks its columns and questions."""
  path = _require_file(manual_dir, f"{split}.csv", f"{split} split")
  try:
    return _read_csv(path, facts)
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: byte {e.start} is not UTF-8; expected a UTF-8 CSV file") from None
  except csv.Error as e:
    raise DataError(f"{path}: not a readable CSV ({e}); expected comma-separated values with a "
                    "header row") from None


def _read_csv(path: str, facts: DatasetFacts) -> list[RawQuestion]:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    needed = ("video_id", "question") + facts.answer_columns
    missing = [c for c in needed if c not in columns]
    if missing:
      raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected columns "
                      f"{', '.join(needed)} (and optionally type), found {', '.join(columns) or 'none'}")
    has_type = "type" in columns
    questions = []
    for row_index, row in enumerate(reader):
      line = reader.line_num
      question = (row["question"] or "").strip()
      if not question:
        raise DataError(f"{path}: row {row_index} (line {line}): empty question; expected text in "
                        "column 'question'")
      video_id = (row["video_id"] or "").strip()
      if not video_id:
        raise DataError(f"{path}: row {row_index} (line {line}): empty video_id; expected a key of "
                        "the features file")
      annotations = tuple(a.strip() for c in facts.answer_columns
                          if (a := row[c]) is not None and a.strip())
      questions.append(RawQuestion(
          index=row_index, video_id=video_id, question=question, annotations=annotations,
          type_name=(row["type"] or "").strip() if has_type else ""))
  return questions


class FeatureFile:
  """Frame features of every video, read lazily where the format allows it.

  ``clipvitl14.pth`` needs torch and is loaded whole; ``clipvitl14.npz`` is read one video at a time.
  """

  def __init__(self, manual_dir: str, features_dim: int):
    for filename in FEATURE_FILES:
      path = os.path.join(manual_dir, filename)
      if os.path.isfile(path):
        break
    else:
      _require_file(manual_dir, FEATURE_FILES[0], "frame features")
    self.path = path
    self.features_dim = features_dim
    if path.endswith(".pth"):
      # Imported here so that only users of the FrozenBiLM .pth format need torch.
      import torch  # pylint: disable=g-import-not-at-top
      try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
      except Exception as e:  # torch raises many types for corrupt files.
        raise DataError(f"{path}: cannot be read by torch.load ({type(e).__name__}); expected a dict "
                        "video_id -> (frames, dim) tensor") from None
      if not isinstance(loaded, Mapping):
        raise DataError(f"{path}: holds a {type(loaded).__name__}; expected a dict video_id -> "
                        "(frames, dim) tensor")
      self._arrays = {str(k): v for k, v in loaded.items()}
    else:
      try:
        self._arrays = np.load(path, allow_pickle=False)
      except Exception as e:  # np.load raises several types for corrupt archives.
        raise DataError(f"{path}: cannot be read by numpy.load ({type(e).__name__}); expected an .npz "
                        "with one (frames, dim) array per video id") from None

  def video_ids(self) -> set[str]:
    return set(self._arrays.keys()) if isinstance(self._arrays, dict) else set(self._arrays.files)

  def frames(self, video_id: str) -> np.ndarray:
    """Frames of one video, checked.

    Returns:
      ``[frames, features_dim]`` float32.
    """
    value = self._arrays[video_id]
    if hasattr(value, "detach"):
      value = value.detach().float().numpy()
    value = np.asarray(value, dtype=np.float32)
    if value.ndim != 2 or value.shape[1] != self.features_dim or value.shape[0] == 0:
      raise DataError(f"{self.path}: video {video_id!r} has features of shape {tuple(value.shape)}; "
                      f"expected (frames >= 1, {self.features_dim})")
    if not np.all(np.isfinite(value)):
      raise DataError(f"{self.path}: video {video_id!r} has non-finite feature values; expected "
                      "finite floats")
    return value


def drop_questions_without_features(questions: list[RawQuestion], known_ids: set[str],
                                    csv_path: str, features_path: str) -> list[RawQuestion]:
  """Drops questions whose video has no features; too many of them is an error."""
  missing = [q for q in questions if q.video_id not in known_ids]
  if not missing:
    return questions
  if len(missing) > MAX_MISSING_VIDEO_FRACTION * len(questions):
    raise DataError(
        f"{csv_path}: {len(missing)} of {len(questions)} questions refer to video ids with no "
        f"features in {features_path} (first: row {missing[0].index}, video_id "
        f"{missing[0].video_id!r}); expected at most {MAX_MISSING_VIDEO_FRACTION:.0%}")
  logging.warning("%s: dropped %d of %d questions whose video has no features in %s (first: %r)",
                  csv_path, len(missing), len(questions), features_path, missing[0].video_id)
  return [q for q in questions if q.video_id in known_ids]


def sorted_type_names(type_names: set[str]) -> list[str]:
  """Question types in a stable order: numerically when every type is a number."""
  names = [t for t in type_names if t]
  if all(t.lstrip("-").isdigit() for t in names):
    return sorted(names, key=int)
  return sorted(names)


def raw_files(manual_dir: str) -> list[str]:
  """Paths of the raw files a build reads, in a fixed order."""
  files = [os.path.join(manual_dir, f"{s}.csv") for s in SPLITS] + [os.path.join(manual_dir, VOCAB_FILE)]
  files += [p for f in FEATURE_FILES if os.path.isfile(p := os.path.join(manual_dir, f))][:1]
  return files


def content_hash(paths: list[str]) -> str:
  """SHA-256 over the names and bytes of the given files."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
  return digest.hexdigest()


@dataclasses.dataclass
class RawDataset:
  """A checked FrozenBiLM-layout folder, ready to be written by the TFDS builders.

  Attributes:
    answers: vocabulary in id order.
    splits: kept questions per split (train: only those whose most frequent answer is in the vocab).
    rows: number of CSV data rows per split (upper bound of the example index).
    video_ids: every video a kept question refers to, sorted; a question stores its position here.
    type_names: question types in id order, [] without a type column.
    features: the feature file.
    dropped: per split, how many questions were dropped and why.
  """
  answers: list[str]
  splits: dict[str, list[RawQuestion]]
  rows: dict[str, int]
  video_ids: list[str]
  type_names: list[str]
  features: FeatureFile
  dropped: dict[str, dict[str, int]]


def read_raw(manual_dir: str, facts: DatasetFacts, features_dim: int) -> RawDataset:
  """Reads and checks every raw file except the frame values (checked as they are written)."""
  if not os.path.isdir(manual_dir):
    raise DataError(f"{manual_dir}: manual_dir is not a directory; expected a folder in the FrozenBiLM "
                    "layout")
  answers = read_vocab(manual_dir)
  raw_splits = {split: read_split(manual_dir, split, facts) for split in SPLITS}
  features = FeatureFile(manual_dir, features_dim)
  known_ids = features.video_ids()
  vocab = set(answers)
  splits, dropped = {}, {}
  for split, questions in raw_splits.items():
    csv_path = os.path.join(manual_dir, f"{split}.csv")
    kept = drop_questions_without_features(questions, known_ids, csv_path, features.path)
    dropped[split] = {"no_features": len(questions) - len(kept)}
    if split == "train":
      in_vocab = [q for q in kept if most_frequent_answer(q.annotations) in vocab]
      dropped[split]["answer_not_in_vocab"] = len(kept) - len(in_vocab)
      logging.getLogger(__name__).info("%s: kept %d of %d training questions; %d have a most frequent answer outside "
                   "%s", csv_path, len(in_vocab), len(questions), len(kept) - len(in_vocab), VOCAB_FILE)
      kept = in_vocab
      if not kept:
        raise DataError(f"{csv_path}: no training question has its most frequent answer in "
                        f"{os.path.join(manual_dir, VOCAB_FILE)}; expected answers from the vocabulary")
    splits[split] = kept
  video_ids = sorted({q.video_id for qs in splits.values() for q in qs})
  type_names = sorted_type_names({q.type_name for qs in splits.values() for q in qs})
  return RawDataset(answers=answers, splits=splits, rows={s: len(q) for s, q in raw_splits.items()},
                    video_ids=video_ids, type_names=type_names, features=features, dropped=dropped)


def iter_examples(raw: RawDataset, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """TFDS examples of one question split, keyed and ordered by the stable example index."""
  answer_ids = {a: i for i, a in enumerate(raw.answers)}
  video_index = {v: i for i, v in enumerate(raw.video_ids)}
  type_ids = {t: i for i, t in enumerate(raw.type_names)}
  for q in raw.splits[split]:
    counts = annotation_counts(q.annotations)
    yield q.index, {
        "index": q.index,
        "video_index": video_index[q.video_id],
        "video_id": q.video_id,
        "question": q.question,
        "answers": [a for a, _ in counts],
        "answer_ids": np.array([answer_ids.get(a, -1) for a, _ in counts], np.int32),
        "answer_counts": np.array([c for _, c in counts], np.int32),
        "type_id": type_ids.get(q.type_name, -1),
    }
