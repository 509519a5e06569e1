"""FrozenBiLM on deberta-v2-xlarge, the paper's model (~890M parameters, ~30M trainable).

    python -m radi_jax.model.summary --config configs/models/deberta_v2_xlarge.py
"""

from radi_jax.model import presets


def get_config():
  return presets.deberta_v2_xlarge()
