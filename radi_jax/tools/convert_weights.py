"""Converts a local Hugging Face DeBERTa-v2 checkpoint (optionally overlaid with a FrozenBiLM `.pth`)
to an Orbax checkpoint of FrozenBiLM parameters.

    python -m radi_jax.tools.convert_weights --hf_dir DIR [--frozenbilm_pth FILE] --out DIR

The output directory holds `params/` (Orbax, layers unrolled as `layer_<i>`; `merge_pretrained`
adapts them to the scanned layout) and `config.json` (the Hugging Face DeBERTa fields plus the
FrozenBiLM fields the conversion assumed). Nothing is downloaded. A missing, unexpected or mis-shaped
tensor stops the conversion with one line naming it; the output is written to a temporary directory
and renamed at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from radi_jax.model.config import DebertaV2Config, FrozenBiLMConfig, ModelError
from radi_jax.model.frozenbilm import FrozenBiLM


class ConversionError(ModelError):
  """A one-line message about a checkpoint that does not match the model."""


# Both names the Hugging Face masked-LM head has had: `legacy=True` and FrozenBiLM / `legacy=False`.
_HEAD_NAMES = {
    ("mlm_transform", "dense", "kernel"):
        ("cls.predictions.transform.dense.weight", "lm_predictions.lm_head.dense.weight"),
    ("mlm_transform", "dense", "bias"):
        ("cls.predictions.transform.dense.bias", "lm_predictions.lm_head.dense.bias"),
    ("mlm_transform", "LayerNorm", "scale"):
        ("cls.predictions.transform.LayerNorm.weight", "lm_predictions.lm_head.LayerNorm.weight"),
    ("mlm_transform", "LayerNorm", "bias"):
        ("cls.predictions.transform.LayerNorm.bias", "lm_predictions.lm_head.LayerNorm.bias"),
    ("mlm_bias",): ("cls.predictions.bias", "lm_predictions.lm_head.bias"),
    ("answer_embeddings",): ("answer_embeddings.weight",),
    ("answer_bias",): ("answer_bias",),
}

# Tensors checkpoints carry that the model does not use: buffers, weights tied to the word embeddings,
# the absolute positions of `position_biased_input=False` models, and heads of other tasks.
_IGNORED = re.compile(
    r"(.*position_ids$)|(^(cls\.predictions|lm_predictions\.lm_head)\.decoder\.(weight|bias)$)"
    r"|(^mask_predictions\.)|(^(deberta\.)?pooler\.)")
_POSITION_EMBEDDINGS = "deberta.embeddings.position_embeddings.weight"

# Leaves a plain DeBERTa checkpoint does not have: FrozenBiLM adds them (fresh or from its `.pth`).
_FROZENBILM_ONLY = ("adapter", "linear_video", "answer_embeddings", "answer_bias")


def torch_names(path: Sequence[str]) -> tuple[str, ...]:
  """The PyTorch state-dict names a FrozenBiLM parameter (unrolled layout) may have."""
  path = tuple(path)
  if path in _HEAD_NAMES:
    return _HEAD_NAMES[path]
  parts = []
  for p in path[:-1]:
    parts.extend(["layer", p[len("layer_"):]] if re.fullmatch(r"layer_\d+", p) else [p])
  parts.append("bias" if path[-1] == "bias" else "weight")
  return (".".join(parts),)


def to_torch_layout(path: Sequence[str], array: np.ndarray) -> np.ndarray:
  """Swaps Flax `kernel` and PyTorch `weight` layouts.

  Dense `[in, out]` ↔ `[out, in]`; Conv `[k, in, out]` ↔ `[out, in, k]`.
  """
  if path[-1] == "kernel":
    return np.transpose(array)
  return array


def expected_shapes(config: FrozenBiLMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Parameter shapes of the model (unrolled layout), computed without allocating weights."""
  config = dataclasses.replace(config, scan_layers=False)
  model = FrozenBiLM(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32),
                         jnp.zeros((1, 1, config.features_dim)), jnp.ones((1, 1), jnp.int32),
                         jnp.zeros((1,), jnp.int32), deterministic=True))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _load_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # Only .bin/.pth need PyTorch.
  except ImportError as e:
    raise ConversionError(f"{path}: reading a PyTorch checkpoint needs torch installed") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error.
    raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from e
  if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
    state = state["model"]
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: expected a state dict (or a dict with a 'model' state dict)")
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  out = {}
  try:
    with safe_open(str(path), framework="numpy") as f:
      for name in f.keys():
        out[name] = np.asarray(f.get_tensor(name), np.float32)
  except Exception:  # noqa: BLE001 - bfloat16 files need the torch reader.
    from safetensors.torch import load_file
    out = {k: v.float().numpy() for k, v in load_file(str(path)).items()}
  return out


def read_hf_dir(hf_dir: pathlib.Path) -> tuple[DebertaV2Config, dict[str, np.ndarray]]:
  """Reads `config.json` and the weights (safetensors or .bin, sharded or not) of a HF directory."""
  config_file = hf_dir / "config.json"
  if not config_file.is_file():
    raise ConversionError(f"{config_file}: missing; expected a Hugging Face DeBERTa-v2 config")
  try:
    config = DebertaV2Config.from_hf_dict(json.loads(config_file.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise ConversionError(f"{config_file}: not a DeBERTa-v2 config ({e})") from e
  state: dict[str, np.ndarray] = {}
  for single, index, reader in (("model.safetensors", "model.safetensors.index.json", _load_safetensors),
                                ("pytorch_model.bin", "pytorch_model.bin.index.json", _load_torch)):
    if (hf_dir / single).is_file():
      state = reader(hf_dir / single)
      break
    if (hf_dir / index).is_file():
      shards = sorted(set(json.loads((hf_dir / index).read_text())["weight_map"].values()))
      for shard in shards:
        state.update(reader(hf_dir / shard))
      break
  else:
    raise ConversionError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (nor their sharded index)")
  if not any(k.startswith("deberta.") for k in state):
    state = {k if k.startswith(("cls.", "lm_predictions.")) else f"deberta.{k}": v for k, v in state.items()}
  return config, state


def _assign(params: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  node = params
  for p in path[:-1]:
    node = node.setdefault(p, {})
  node[path[-1]] = value


def state_dict_to_params(state: Mapping[str, np.ndarray], config: FrozenBiLMConfig, *, source: str,
                         require_backbone: bool) -> dict:
  """Maps a PyTorch state dict onto FrozenBiLM parameters (unrolled layout).

  Args:
    state: name → array.
    config: the model the parameters are for.
    source: file name used in error messages.
    require_backbone: every DeBERTa and masked-LM-head tensor must be present.

  Returns:
    A nested dict holding the parameters found.

  Raises:
    ConversionError: on a missing, unexpected or mis-shaped tensor.
  """
  shapes = expected_shapes(config)
  state = dict(state)
  params: dict = {}
  num_answers = None
  for path, shape in shapes.items():
    names = [n for n in torch_names(path) if n in state]
    if not names:
      if require_backbone and not any(part in _FROZENBILM_ONLY for part in path):
        raise ConversionError(f"{source}: missing tensor {torch_names(path)[-1]} (expected shape {shape})")
      continue
    name = names[0]
    value = np.asarray(state.pop(name), np.float32)
    for alias in names[1:]:
      state.pop(alias)
    expected = shape[::-1] if path[-1] == "kernel" else shape
    if path[0] in ("answer_embeddings", "answer_bias"):
      # The answer vocabulary is the checkpoint's own; only the embedding width must match.
      num_answers = value.shape[0] if num_answers is None else num_answers
      expected = (num_answers,) + expected[1:]
    if tuple(value.shape) != expected:
      raise ConversionError(f"{source}: tensor {name} has shape {tuple(value.shape)}, the model expects {expected}")
    _assign(params, path, to_torch_layout(path, value))
  for name in list(state):
    if _IGNORED.match(name) or (name == _POSITION_EMBEDDINGS and not config.deberta.position_biased_input):
      state.pop(name)
  if state:
    name = sorted(state)[0]
    raise ConversionError(f"{source}: unexpected tensor {name} (shape {tuple(np.shape(state[name]))}) "
                          f"has no place in the model")
  return params


def _merge(base: dict, overlay: Mapping) -> dict:
  out = dict(base)
  for k, v in overlay.items():
    out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) else v
  return out


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, frozenbilm_pth: str | os.PathLike | None = None,
            *, ds_factor: int = 8, features_dim: int = 768) -> pathlib.Path:
  """Converts a Hugging Face DeBERTa-v2 directory (and a FrozenBiLM `.pth`) into `out`.

  Args:
    hf_dir: directory with `config.json` and the weights.
    out: the checkpoint directory to create (must not exist).
    frozenbilm_pth: optional FrozenBiLM checkpoint whose tensors replace / add to the DeBERTa ones.
    ds_factor: adapter bottleneck factor the `.pth` was trained with.
    features_dim: frame-feature width the `.pth` was trained with.

  Returns:
    The checkpoint directory.
  """
  from radi_jax.model.weights import save_params
  hf_dir, out = pathlib.Path(hf_dir), pathlib.Path(out)
  if out.exists():
    raise ConversionError(f"{out}: already exists; choose a new output directory")
  deberta, state = read_hf_dir(hf_dir)
  config = FrozenBiLMConfig(deberta=deberta, ds_factor=ds_factor, features_dim=features_dim, scan_layers=False)
  params = state_dict_to_params(state, config, source=str(hf_dir), require_backbone=True)
  if frozenbilm_pth is not None:
    overlay = _load_torch(pathlib.Path(frozenbilm_pth))
    params = _merge(params, state_dict_to_params(overlay, config, source=str(frozenbilm_pth),
                                                 require_backbone=False))
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    save_params(tmp / "params", params)
    hf = deberta.to_hf_dict()
    frozenbilm = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "deberta"}
    (tmp / "config.json").write_text(json.dumps({"deberta": hf, "frozenbilm": frozenbilm}, indent=2))
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m radi_jax.tools.convert_weights", description=__doc__.split("\n")[0])
  parser.add_argument("--hf_dir", required=True, help="local Hugging Face DeBERTa-v2 directory")
  parser.add_argument("--frozenbilm_pth", default=None, help="optional FrozenBiLM checkpoint (.pth)")
  parser.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
  parser.add_argument("--ds_factor", type=int, default=8, help="adapter bottleneck factor of the .pth")
  parser.add_argument("--features_dim", type=int, default=768, help="frame-feature width of the .pth")
  args = parser.parse_args(argv)
  try:
    out = convert(args.hf_dir, args.out, args.frozenbilm_pth, ds_factor=args.ds_factor,
                  features_dim=args.features_dim)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
