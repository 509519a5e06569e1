"""Opening a dataset and the grain loaders that turn it into model batches.

A batch is a dict of numpy arrays (B = per-process batch size, L one of ``bucket_lengths``,
F = ``max_feats``, D = ``features_dim``, N = number of answers):

- ``input_ids [B, L] int32``, ``attention_mask [B, L] int32``: the prompt of DESIGN §3;
- ``mask_position [B] int32``: index of the [MASK] token within the text tokens;
- ``video [B, F, D] float32``, ``video_mask [B, F] int32``: frames, evenly subsampled or zero-padded;
- ``targets [B, N] float32``: training targets per ``train_targets``;
- ``relevance [B, N] float32``: evaluation relevance from every annotation;
- ``type_id [B] int32`` (-1 without types), ``index [B] int64`` (stable example index, -1 on padding),
  ``valid [B] bool`` (False on padding rows, whose targets and relevance are zero).

Order: a global batch of ``batch_size * process_count`` examples is a slice of one permutation of the
split (seeded by ``(seed, epoch)``; identity for evaluation), padded at the end of an epoch; process p
takes rows ``[p * batch_size, (p + 1) * batch_size)`` of it. So every example is seen exactly once per
epoch across processes, every process yields the same number of batches, and the global batches do
not depend on the number of processes.
"""

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import chex
import grain
import ml_collections
import numpy as np
import transformers

from radi_jax.data import builders
from radi_jax.data import prompt as prompt_lib
from radi_jax.data import raw as raw_lib
from radi_jax.data import synth_vqa
from radi_jax.data.config import DATASET_NAMES, TRAIN_TARGETS
from radi_jax.data.errors import DataError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class QuestionTable:
  """Every question of one split, in memory, with its prompt already tokenised.

  Attributes:
    index: ``[n]`` int64 stable example index (row in the split's CSV).
    video_index: ``[n]`` int64 record of the question's video in the ``videos`` split.
    answer_ids: ``[n, K]`` int32 distinct annotated answers (-1: outside the vocabulary or padding).
    answer_counts: ``[n, K]`` int32 annotators per answer (0 on padding).
    type_id: ``[n]`` int32, -1 without types.
    token_ids: n int32 arrays, the prompt tokens with special tokens.
    token_lengths: ``[n]`` int32.
    mask_position: ``[n]`` int32 index of [MASK] in the prompt tokens.
  """
  index: np.ndarray
  video_index: np.ndarray
  answer_ids: np.ndarray
  answer_counts: np.ndarray
  type_id: np.ndarray
  token_ids: list[np.ndarray]
  token_lengths: np.ndarray
  mask_position: np.ndarray

  def __len__(self) -> int:
    return len(self.index)


@dataclasses.dataclass
class VQAData:
  """An opened dataset.

  Attributes:
    name: dataset name.
    num_answers: size of the answer vocabulary N.
    answers: answer strings in id order.
    type_names: question types in id order ([] when the dataset has none).
    tokenizer: the Hugging Face tokenizer of the prompts.
    split_sizes: questions per split after filtering.
    fingerprint: changes whenever the examples or their tokenisation change.
    num_train_index: one more than the largest train example index.
    num_annotations: annotators per question (5 for iVQA-layout data, else 1).
    data_dir: folder holding the TFDS builds.
    max_tokens: longest prompt in tokens.
  """
  name: str
  answers: list[str]
  type_names: list[str]
  tokenizer: Any
  split_sizes: dict[str, int]
  fingerprint: str
  num_train_index: int
  num_annotations: int
  data_dir: str
  max_tokens: int
  _tables: dict[str, QuestionTable] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_answers(self) -> int:
    return len(self.answers)

  def questions(self, split: str) -> QuestionTable:
    """The split's questions, read once and kept."""
    if split not in raw_lib.SPLITS:
      raise DataError(f"split {split!r}: expected one of {', '.join(raw_lib.SPLITS)}")
    if split not in self._tables:
      self._tables[split] = _read_questions(self, split)
    return self._tables[split]


def _read_questions(data: VQAData, split: str) -> QuestionTable:
  source = builders.read_build(data.data_dir, data.name, builders.QUESTIONS).as_data_source(split)
  records = []
  for start in range(0, len(source), 4096):
    records += source.__getitems__(list(range(start, min(start + 4096, len(source)))))
  width = max([len(r["answer_ids"]) for r in records] + [1])
  answer_ids = np.full((len(records), width), -1, np.int32)
  answer_counts = np.zeros((len(records), width), np.int32)
  for row, r in enumerate(records):
    answer_ids[row, :len(r["answer_ids"])] = r["answer_ids"]
    answer_counts[row, :len(r["answer_counts"])] = r["answer_counts"]
  questions = [r["question"].decode("utf-8") for r in records]
  token_ids, mask_position = prompt_lib.tokenize_prompts(data.tokenizer, questions, data.max_tokens)
  return QuestionTable(
      index=np.array([r["index"] for r in records], np.int64).reshape(-1),
      video_index=np.array([r["video_index"] for r in records], np.int64).reshape(-1),
      answer_ids=answer_ids, answer_counts=answer_counts,
      type_id=np.array([r["type_id"] for r in records], np.int32).reshape(-1),
      token_ids=token_ids, token_lengths=np.array([len(t) for t in token_ids], np.int32),
      mask_position=mask_position)


def _hash_json(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _tokenizer_hash(tokenizer_dir: str) -> str:
  files = sorted(os.path.join(tokenizer_dir, f) for f in os.listdir(tokenizer_dir)
                 if os.path.isfile(os.path.join(tokenizer_dir, f)))
  return raw_lib.content_hash(files)


def _small_files_signature(manual_dir: str) -> dict[str, str]:
  """Content hashes of the CSVs and vocabulary, size of the (possibly huge) features file."""
  signature = {}
  for path in raw_lib.raw_files(manual_dir):
    if not os.path.isfile(path):
      signature[os.path.basename(path)] = "missing"
    elif path.endswith(raw_lib.FEATURE_FILES):
      signature[os.path.basename(path)] = str(os.path.getsize(path))
    else:
      signature[os.path.basename(path)] = raw_lib.content_hash([path])
  return signature


def _synth_dirs(data_config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(raw folder, TFDS data_dir) of the generated dataset: one folder per generator setting."""
  settings = {"synth": data_config.synth.to_dict(), "features_dim": data_config.features_dim}
  root = os.path.join(data_config.data_dir, f"synth_vqa_{_hash_json(settings)[:12]}")
  return os.path.join(root, "raw"), root


def _check_config(data_config: ml_collections.ConfigDict) -> None:
  if data_config.name not in DATASET_NAMES:
    raise DataError(f"data.name={data_config.name!r}: expected one of {', '.join(DATASET_NAMES)}")
  if data_config.train_targets not in TRAIN_TARGETS:
    raise DataError(f"data.train_targets={data_config.train_targets!r}: expected one of "
                    f"{', '.join(TRAIN_TARGETS)}")
  if not data_config.data_dir:
    raise DataError("data.data_dir: empty; expected the folder where TFDS writes the dataset")
  if data_config.max_feats < 1 or data_config.max_tokens < 8:
    raise DataError(f"data.max_feats={data_config.max_feats}, data.max_tokens="
                    f"{data_config.max_tokens}: expected max_feats >= 1 and max_tokens >= 8")


def open_dataset(data_config: ml_collections.ConfigDict) -> VQAData:
  """Builds the dataset's array_record files unless already built, and opens it.

  For ``synth_vqa`` without ``manual_dir``, first generates the raw files and tokenizer (from
  ``data_config.synth``) under ``data_dir``.

  Args:
    data_config: ``config.data`` (see ``radi_jax.data.config.default_config``).

  Returns:
    The opened dataset.

  Raises:
    DataError: bad raw files or configuration, in one line.
  """
  _check_config(data_config)
  name = data_config.name
  manual_dir, data_dir = data_config.manual_dir, data_config.data_dir
  tokenizer_dir = data_config.tokenizer_dir
  if name == "synth_vqa" and not manual_dir:
    manual_dir, data_dir = _synth_dirs(data_config)
    if not os.path.isdir(manual_dir):
      logging.getLogger(__name__).info("generating synth_vqa into %s", manual_dir)
      try:
        synth_vqa.write(manual_dir, data_config.synth, data_config.features_dim)
      except OSError:
        # Another process sharing data_dir may have finished the same generation first.
        if not os.path.isdir(manual_dir):
          raise
  if not manual_dir:
    raise DataError(f"data.manual_dir: empty; expected the folder of {name} in the FrozenBiLM layout")
  if not tokenizer_dir:
    tokenizer_dir = os.path.join(manual_dir, synth_vqa.TOKENIZER_DIR)
    if not os.path.isdir(tokenizer_dir):
      raise DataError(f"data.tokenizer_dir: empty and {tokenizer_dir} does not exist; expected a "
                      "local Hugging Face tokenizer directory")
  if not os.path.isdir(tokenizer_dir):
    raise DataError(f"data.tokenizer_dir={tokenizer_dir!r}: not a directory; expected a local Hugging "
                    "Face tokenizer directory (nothing is downloaded)")
  facts = raw_lib.DATASET_FACTS[name]

  signature = _small_files_signature(manual_dir) if os.path.isdir(manual_dir) else {}
  built = all(builders.is_built(data_dir, name, c) for c in (builders.QUESTIONS, builders.VIDEOS))
  if not built:
    raw = raw_lib.read_raw(manual_dir, facts, data_config.features_dim)
    metadata = {
        "raw_fingerprint": raw_lib.content_hash(raw_lib.raw_files(manual_dir)),
        "raw_signature": signature,
        "manual_dir": os.path.abspath(manual_dir),
        "features_dim": data_config.features_dim,
        "answers": raw.answers,
        "type_names": raw.type_names,
        "num_annotations": facts.num_annotations,
        "num_train_index": raw.rows["train"],
        "dropped": raw.dropped,
    }
    # A half-finished earlier build may have left one config; it must come from the same files.
    for config in (builders.QUESTIONS, builders.VIDEOS):
      if builders.is_built(data_dir, name, config):
        _check_same_build(data_dir, name, config, metadata["raw_fingerprint"])
    builders.build(raw, name=name, data_dir=data_dir, features_dim=data_config.features_dim,
                   metadata=metadata)
  info = builders.read_build(data_dir, name, builders.QUESTIONS).info
  metadata = dict(info.metadata)
  build_path = os.path.join(data_dir, name)
  if metadata["raw_signature"] != signature:
    changed = sorted(set(metadata["raw_signature"].items()) ^ set(signature.items()))
    raise DataError(
        f"{build_path}: built from {metadata['manual_dir']}, but {changed[0][0]} in {manual_dir} "
        f"differs; expected the same raw files (delete {build_path} to rebuild, or set another "
        "data.data_dir)")
  _check_same_build(data_dir, name, builders.VIDEOS, metadata["raw_fingerprint"])
  if metadata["features_dim"] != data_config.features_dim:
    raise DataError(f"{build_path}: built with features_dim={metadata['features_dim']}; expected "
                    f"data.features_dim={data_config.features_dim}")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
  except (OSError, ValueError) as e:
    raise DataError(f"{tokenizer_dir}: cannot be loaded by transformers.AutoTokenizer "
                    f"({type(e).__name__}); expected a local tokenizer directory") from None
  if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
    raise DataError(f"{tokenizer_dir}: the tokenizer has no mask or pad token; expected both")
  fingerprint = _hash_json({
      "raw": metadata["raw_fingerprint"], "name": name, "tokenizer": _tokenizer_hash(tokenizer_dir),
      "max_feats": data_config.max_feats, "max_tokens": data_config.max_tokens})[:16]
  return VQAData(
      name=name, answers=list(metadata["answers"]), type_names=list(metadata["type_names"]),
      tokenizer=tokenizer,
      split_sizes={s: info.splits[s].num_examples for s in raw_lib.SPLITS},
      fingerprint=fingerprint, num_train_index=int(metadata["num_train_index"]),
      num_annotations=int(metadata["num_annotations"]), data_dir=data_dir,
      max_tokens=data_config.max_tokens)


def _check_same_build(data_dir: str, name: str, config: str, raw_fingerprint: str) -> None:
  stored = builders.read_build(data_dir, name, config).info.metadata["raw_fingerprint"]
  if stored != raw_fingerprint:
    path = builders.build_dir(data_dir, name, config)
    raise DataError(f"{path}: built from other raw files than the rest of {name}; expected one "
                    f"build (delete {os.path.join(data_dir, name)} to rebuild)")


def sample_frames(frames: np.ndarray, max_feats: int) -> tuple[np.ndarray, np.ndarray]:
  """Evenly spaced frames when there are too many, zero padding when too few.

  Args:
    frames: ``[frames, D]``.
    max_feats: F.

  Returns:
    video ``[F, D]`` float32 and video_mask ``[F]`` int32.
  """
  count = len(frames)
  if count > max_feats:
    # FrozenBiLM's choice: frame floor(j * count / F) for j = 0 .. F-1.
    frames = frames[(np.arange(max_feats) * count) // max_feats]
  video = np.zeros((max_feats, frames.shape[1]), np.float32)
  video[:len(frames)] = frames
  mask = np.zeros((max_feats,), np.int32)
  mask[:len(frames)] = 1
  return video, mask


def answer_relevance(answer_ids: np.ndarray, answer_counts: np.ndarray, num_answers: int,
                     num_annotations: int) -> np.ndarray:
  """Relevance of every answer, DESIGN §4: min(1, count / 2) with several annotators, else 0/1.

  Args:
    answer_ids: ``[B, K]`` (-1 = outside the vocabulary or padding).
    answer_counts: ``[B, K]``.

  Returns:
    ``[B, N]`` float32.
  """
  scores = np.minimum(1.0, answer_counts / 2.0) if num_annotations > 1 else (answer_counts > 0) * 1.0
  return _scatter(answer_ids, scores, num_answers)


def most_frequent_targets(answer_ids: np.ndarray, answer_counts: np.ndarray,
                          num_answers: int) -> np.ndarray:
  """One-hot targets on the most frequently annotated answer (first of ties); zero if outside vocab.

  Args:
    answer_ids: ``[B, K]`` in order of first annotation.
    answer_counts: ``[B, K]``.

  Returns:
    ``[B, N]`` float32.
  """
  top = np.argmax(answer_counts, axis=1)  # argmax keeps the first of equal counts.
  rows = np.arange(len(answer_ids))
  ids = np.where(answer_counts[rows, top] > 0, answer_ids[rows, top], -1)[:, None]
  return _scatter(ids, np.ones(ids.shape), num_answers)


def _scatter(ids: np.ndarray, values: np.ndarray, num_answers: int) -> np.ndarray:
  out = np.zeros((len(ids), num_answers + 1), np.float32)
  rows = np.repeat(np.arange(len(ids)), ids.shape[1])
  # -1 (outside the vocabulary) lands in an extra column that is cut off.
  out[rows, np.where(ids >= 0, ids, num_answers).reshape(-1)] = values.reshape(-1)
  return out[:, :num_answers]


def bucket_length(length: int, bucket_lengths: tuple[int, ...], max_tokens: int) -> int:
  """The smallest bucket that holds ``length`` tokens (``max_tokens`` when none does)."""
  fitting = [b for b in sorted(bucket_lengths) if b >= length]
  return fitting[0] if fitting else max(max_tokens, length)


class BatchMaker:
  """Turns a global step into this process's batch; a picklable function for grain workers."""

  def __init__(self, data: VQAData, data_config: ml_collections.ConfigDict, split: str, *,
               batch_size: int, process_index: int, process_count: int, seed: int | None,
               train_targets: str):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index}: expected 0 <= index < {process_count}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: expected at least 1")
    self.table = data.questions(split)
    self.data_dir = data.data_dir
    self.name = data.name
    self.num_answers = data.num_answers
    self.num_annotations = data.num_annotations
    self.pad_id = data.tokenizer.pad_token_id
    self.max_feats = data_config.max_feats
    self.features_dim = data_config.features_dim
    self.max_tokens = data_config.max_tokens
    self.bucket_lengths = tuple(data_config.bucket_lengths)
    self.batch_size = batch_size
    self.process_index = process_index
    self.global_batch_size = batch_size * process_count
    self.seed = seed
    self.train_targets = train_targets
    self.steps_per_epoch = max(1, -(-len(self.table) // self.global_batch_size))
    self._videos = None
    self._epoch_rows: dict[int, np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_videos"] = None  # Each worker opens its own array_record readers.
    return state

  def epoch_rows(self, epoch: int) -> np.ndarray:
    """Rows of the split in this epoch's order, padded with -1 to whole global batches."""
    rows = self._epoch_rows.get(epoch)
    if rows is None:
      rows = self._order(epoch)
      # grain's reader threads share this cache; a lost entry is only recomputed.
      if len(self._epoch_rows) > 2:
        self._epoch_rows.clear()
      self._epoch_rows[epoch] = rows
    return rows

  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.table)
    order = (np.arange(n) if self.seed is None
             else np.random.default_rng([self.seed, epoch]).permutation(n))
    padded = np.full(self.steps_per_epoch * self.global_batch_size, -1, np.int64)
    padded[:n] = order
    return padded

  def global_rows(self, step: int) -> np.ndarray:
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    start = step_in_epoch * self.global_batch_size
    return self.epoch_rows(epoch)[start:start + self.global_batch_size]

  def __call__(self, step: int) -> Batch:
    global_rows = self.global_rows(int(step))
    start = self.process_index * self.batch_size
    rows = global_rows[start:start + self.batch_size]
    valid = rows >= 0
    # Padding rows repeat a real example so the model sees ordinary inputs; valid=False masks them.
    safe = np.where(valid, rows, 0)
    t = self.table
    real = global_rows[global_rows >= 0]
    # The length comes from the global batch so that every process pads to the same shape.
    length = bucket_length(int(t.token_lengths[real].max(initial=1)), self.bucket_lengths,
                           self.max_tokens)
    input_ids = np.full((len(rows), length), self.pad_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(safe):
      tokens = t.token_ids[row]
      input_ids[b, :len(tokens)] = tokens
      attention_mask[b, :len(tokens)] = 1
    video, video_mask = self._video(t.video_index[safe])
    relevance = answer_relevance(t.answer_ids[safe], t.answer_counts[safe], self.num_answers,
                                 self.num_annotations)
    if self.train_targets == "all":
      targets = relevance.copy()
    else:
      targets = most_frequent_targets(t.answer_ids[safe], t.answer_counts[safe], self.num_answers)
    targets[~valid] = 0.0
    relevance[~valid] = 0.0
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mask_position": t.mask_position[safe].astype(np.int32),
        "video": video,
        "video_mask": video_mask,
        "targets": targets,
        "relevance": relevance,
        "type_id": np.where(valid, t.type_id[safe], -1).astype(np.int32),
        "index": np.where(valid, t.index[safe], -1).astype(np.int64),
        "valid": valid,
    }
    b, n = len(rows), self.num_answers
    chex.assert_shape([batch["input_ids"], batch["attention_mask"]], (b, length))
    chex.assert_shape([batch["video"]], (b, self.max_feats, self.features_dim))
    chex.assert_shape([batch["targets"], batch["relevance"]], (b, n))
    return batch

  def _video(self, video_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self._videos is None:
      self._videos = builders.read_build(self.data_dir, self.name, builders.VIDEOS).as_data_source(
          builders.VIDEOS)
    unique, inverse = np.unique(video_index, return_inverse=True)
    records = self._videos.__getitems__([int(i) for i in unique])
    sampled = [sample_frames(r["frames"], self.max_feats) for r in records]
    video = np.stack([sampled[i][0] for i in inverse.reshape(-1)])
    mask = np.stack([sampled[i][1] for i in inverse.reshape(-1)])
    return video, mask


class Loader:
  """An iterator of batches that can save and restore its position.

  Attributes:
    steps_per_epoch: batches per epoch (the same on every process).
    num_steps: batches in all, None when it repeats forever.
    global_batch_size: examples per step over all processes.
  """

  def __init__(self, maker: BatchMaker, num_epochs: int | None, worker_count: int,
               prefetch_buffer: int):
    self.steps_per_epoch = maker.steps_per_epoch
    self.global_batch_size = maker.global_batch_size
    self.num_steps = None if num_epochs is None else num_epochs * maker.steps_per_epoch
    steps = grain.MapDataset.range(self.steps_per_epoch).repeat(num_epochs)
    dataset = steps.map_with_index(lambda step, _: maker(step)).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if worker_count else 2, prefetch_buffer_size=prefetch_buffer))
    if worker_count > 0:
      _ensure_absl_flags_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=worker_count, per_worker_buffer_size=prefetch_buffer))
    self._iterator = iter(dataset)

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of the iterator."""
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from a position saved by :meth:`get_state`."""
    self._iterator.set_state(state)

  def epoch(self, step: int) -> int:
    """Epoch of the batch at ``step`` (0-based)."""
    return step // self.steps_per_epoch


def _ensure_absl_flags_parsed() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  # grain's worker processes read absl flags; a library caller may never have parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_loader(data: VQAData, data_config: ml_collections.ConfigDict, *, batch_size: int,
                      seed: int, process_index: int = 0, process_count: int = 1,
                      num_epochs: int | None = None) -> Loader:
  """Shuffled training batches of this process, a new order each epoch.

  Args:
    data: from :func:`open_dataset`.
    data_config: ``config.data``.
    batch_size: examples per batch on this process.
    seed: shuffling seed; the order is the same on every process.
    process_index: this process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``).
    num_epochs: epochs to yield; None repeats forever.

  Returns:
    A :class:`Loader` over batches as described in the module docstring.
  """
  maker = BatchMaker(data, data_config, "train", batch_size=batch_size, process_index=process_index,
                     process_count=process_count, seed=seed, train_targets=data_config.train_targets)
  return Loader(maker, num_epochs, data_config.worker_count, data_config.prefetch_buffer)


def make_eval_loader(data: VQAData, data_config: ml_collections.ConfigDict, split: str, *,
                     batch_size: int, process_index: int = 0, process_count: int = 1) -> Loader:
  """One pass over a split in a fixed order; the last global batch is padded with valid=False.

  Args:
    data: from :func:`open_dataset`.
    data_config: ``config.data``.
    split: 'train', 'val' or 'test'.
    batch_size: examples per batch on this process.
    process_index: this process.
    process_count: number of processes.

  Returns:
    A :class:`Loader`; ``targets`` follow ``train_targets`` so it also serves the teacher cache.
  """
  maker = BatchMaker(data, data_config, split, batch_size=batch_size, process_index=process_index,
                     process_count=process_count, seed=None, train_targets=data_config.train_targets)
  return Loader(maker, 1, data_config.worker_count, data_config.prefetch_buffer)
