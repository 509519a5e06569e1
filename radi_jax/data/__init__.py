"""Datasets and input pipeline: FrozenBiLM-layout TFDS builders, synth_vqa and grain loaders."""

from radi_jax.data.errors import DataError
from radi_jax.data.pipeline import VQAData, make_eval_loader, make_train_loader, open_dataset
from radi_jax.data.prompt import tokenize_answers

__all__ = ["DataError", "VQAData", "make_eval_loader", "make_train_loader", "open_dataset",
           "tokenize_answers"]
