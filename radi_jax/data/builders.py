"""TFDS builders (array_record, no TensorFlow) for datasets in the FrozenBiLM layout.

Each dataset is two TFDS configs: ``questions`` (splits train/val/test, one record per question,
pointing at a video by ``video_index``) and ``videos`` (split ``videos``, one record per video), so a
video's frames are stored once however many questions share it. The five datasets differ only in
their :class:`~radi_jax.data.raw.DatasetFacts`.
"""

import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from radi_jax.data import raw as raw_lib
from radi_jax.data.errors import DataError

QUESTIONS = "questions"
VIDEOS = "videos"
VERSION = "1.0.0"


class VQABuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes one FrozenBiLM-layout folder, already read and checked, as array_record."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=QUESTIONS, description="One record per question."),
      tfds.core.BuilderConfig(name=VIDEOS, description="Frame features, one record per video."),
  ]

  def __init__(self, *, raw: raw_lib.RawDataset | None, features_dim: int,
               metadata: dict[str, Any], **kwargs):
    """Args:
      raw: the checked raw folder (None when only reading an existing build).
      features_dim: dimension of a frame feature.
      metadata: JSON-serialisable facts stored with the build (vocabulary, fingerprint, ...).
      **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (data_dir, config, file_format).
    """
    self._raw = raw
    self._features_dim = features_dim
    self._metadata = metadata
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == VIDEOS:
      features = tfds.features.FeaturesDict({
          "video_id": tfds.features.Text(),
          "frames": tfds.features.Tensor(shape=(None, self._features_dim), dtype=np.float32),
      })
    else:
      features = tfds.features.FeaturesDict({
          "index": np.int64,
          "video_index": np.int64,
          "video_id": tfds.features.Text(),
          "question": tfds.features.Text(),
          "answers": tfds.features.Sequence(tfds.features.Text()),
          "answer_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "answer_counts": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "type_id": np.int32,
      })
    # Records keep the CSV / video-id order so that reading a split back is deterministic.
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(self._metadata))

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw folder was read before the build started.
    if self._raw is None:
      raise ValueError("VQABuilder needs the raw dataset to build.")
    if self.builder_config.name == VIDEOS:
      return {VIDEOS: self._generate_examples(VIDEOS)}
    return {split: self._generate_examples(split) for split in raw_lib.SPLITS}

  def _generate_examples(self, split: str):
    if split == VIDEOS:
      for video_index, video_id in enumerate(self._raw.video_ids):
        yield video_index, {"video_id": video_id, "frames": self._raw.features.frames(video_id)}
    else:
      yield from raw_lib.iter_examples(self._raw, split)


def _builder_class(name: str) -> type[VQABuilder]:
  # TFDS takes the on-disk folder name from the class attribute ``name``.
  return type(f"VQABuilder_{name}", (VQABuilder,), {"name": name}, skip_registration=True)


BUILDER_CLASSES = {name: _builder_class(name) for name in raw_lib.DATASET_FACTS}


def build_dir(data_dir: str, name: str, config: str) -> str:
  """Folder of a finished build."""
  return os.path.join(data_dir, name, config, VERSION)


def is_built(data_dir: str, name: str, config: str) -> bool:
  # TFDS writes dataset_info.json last, inside a temporary folder renamed on success.
  return os.path.isfile(os.path.join(build_dir(data_dir, name, config), "dataset_info.json"))


def build(raw: raw_lib.RawDataset, *, name: str, data_dir: str, features_dim: int,
          metadata: dict[str, Any]) -> None:
  """Writes the videos, then the questions, of one dataset unless already built.

  A failure leaves only TFDS's ``incomplete.*`` folders, which no later run takes as a dataset.
  """
  for config in (VIDEOS, QUESTIONS):
    if is_built(data_dir, name, config):
      continue
    builder = BUILDER_CLASSES[name](raw=raw, features_dim=features_dim, metadata=metadata,
                                    data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))


def read_build(data_dir: str, name: str, config: str) -> tfds.core.DatasetBuilder:
  """Opens a finished build for reading."""
  path = build_dir(data_dir, name, config)
  if not is_built(data_dir, name, config):
    raise DataError(f"{path}: no finished {name} {config} build; expected one written by open_dataset")
  return tfds.builder_from_directory(path)
