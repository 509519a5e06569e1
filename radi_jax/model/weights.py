"""Pretrained FrozenBiLM parameters: Orbax save / restore, layer-layout conversion and merging into a
freshly initialised tree.

Two layouts of the encoder layers exist: unrolled (`encoder/layer_0 … layer_{L-1}`, what the
converter writes) and scanned (`encoder/layer_0` plus `encoder/layers/layer` with a leading
`[L - 1]` axis, what `scan_layers=True` initialises). `merge_pretrained` adapts a checkpoint to the
layout of the tree it fills.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from radi_jax.model.config import ModelError

Params = Any
_LAYER = re.compile(r"layer_(\d+)")


def save_params(path: str | os.PathLike, params: Params) -> None:
  """Writes a parameter tree as an Orbax checkpoint at `path` (which must not exist)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(pathlib.Path(path).absolute(), params)
    checkpointer.wait_until_finished()


def load_pretrained(path: str | os.PathLike) -> Params:
  """Restores what `radi_jax.tools.convert_weights` wrote (the directory holding `params/`), as numpy."""
  path = pathlib.Path(path).absolute()
  params_dir = path / "params" if (path / "params").is_dir() else path
  if not params_dir.is_dir():
    raise ModelError(f"{path}: no converted checkpoint there (expected a directory with params/)")
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(params_dir)
  return jax.tree.map(np.asarray, restored)


def _encoders(tree: Mapping) -> list[Mapping]:
  """The dicts holding `layer_<i>` children: `deberta/encoder` (or a bare encoder tree)."""
  if "deberta" in tree:
    return [tree["deberta"]["encoder"]]
  if "encoder" in tree:
    return [tree["encoder"]]
  return [tree]


def is_scanned(params: Params) -> bool:
  return any("layers" in enc for enc in _encoders(params))


def _replace_encoder(params: Mapping, encoder: dict) -> dict:
  params = dict(params)
  if "deberta" in params:
    params["deberta"] = dict(params["deberta"], encoder=encoder)
  elif "encoder" in params:
    params["encoder"] = encoder
  else:
    return encoder
  return params


def to_scan_layout(params: Params) -> Params:
  """Unrolled → scanned: stacks `layer_1 … layer_{L-1}` into `layers/layer`."""
  if is_scanned(params):
    return params
  encoder = dict(_encoders(params)[0])
  indices = sorted(int(m.group(1)) for k in encoder if (m := _LAYER.fullmatch(k)))
  if len(indices) <= 1:
    return params
  rest = [encoder.pop(f"layer_{i}") for i in indices[1:]]
  encoder["layers"] = {"layer": jax.tree.map(lambda *xs: np.stack(xs), *rest)}
  return _replace_encoder(params, encoder)


def to_unrolled_layout(params: Params) -> Params:
  """Scanned → unrolled: splits `layers/layer` into `layer_1 … layer_{L-1}`."""
  if not is_scanned(params):
    return params
  encoder = dict(_encoders(params)[0])
  stacked = encoder.pop("layers")["layer"]
  count = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(count):
    encoder[f"layer_{i + 1}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return _replace_encoder(params, encoder)


def _flat(tree: Params) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def coverage(init_params: Params, pretrained: Params) -> tuple[list[str], list[str]]:
  """Returns `(loaded, missing)`: parameter paths the checkpoint provides and those it lacks."""
  pretrained = to_scan_layout(pretrained) if is_scanned(init_params) else to_unrolled_layout(pretrained)
  given = _flat(pretrained)
  paths = list(_flat(init_params))
  return [p for p in paths if p in given], [p for p in paths if p not in given]


def merge_pretrained(init_params: Params, pretrained: Params) -> Params:
  """Overwrites the leaves of `init_params` that the checkpoint holds.

  Leaves the checkpoint lacks (fresh adapters, the video projection of a text-only checkpoint, ...)
  keep their initial values and are logged. An answer head sized for another vocabulary counts as
  missing, so it keeps its init too (re-initialise it with `init_answer_head`).

  Args:
    init_params: a freshly initialised parameter tree (either layout).
    pretrained: a converted checkpoint (either layout).

  Returns:
    The merged tree, in the layout of `init_params`.

  Raises:
    ModelError: a leaf has another shape than the model's, or the checkpoint holds a tensor the model
      has no place for.
  """
  pretrained = to_scan_layout(pretrained) if is_scanned(init_params) else to_unrolled_layout(pretrained)
  given = _flat(pretrained)
  init_flat = _flat(init_params)
  for path in given:
    if path not in init_flat:
      raise ModelError(f"checkpoint tensor {path} (shape {np.shape(given[path])}) has no place in the model")
  answer_head = ("answer_embeddings", "answer_bias")
  head_fits = all(path not in given or np.shape(given[path]) == np.shape(init_flat[path]) for path in answer_head)
  missing = []

  def pick(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name not in given or (name in answer_head and not head_fits):
      missing.append(name)
      return leaf
    value = given[name]
    if np.shape(value) != np.shape(leaf):
      raise ModelError(f"checkpoint tensor {name} has shape {np.shape(value)}, the model expects {np.shape(leaf)}")
    return np.asarray(value, dtype=np.asarray(leaf).dtype if hasattr(leaf, "dtype") else np.float32)

  merged = jax.tree_util.tree_map_with_path(pick, init_params)
  if missing:
    logging.warning("pretrained checkpoint lacks %d parameter tensors, kept at init: %s", len(missing),
                 ", ".join(missing))
  return merged
