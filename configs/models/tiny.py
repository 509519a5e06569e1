"""Tiny FrozenBiLM model preset (hidden 64, 2 layers): `--config configs/models/tiny.py`."""

from radi_jax.model import presets


def get_config():
  return presets.tiny()
