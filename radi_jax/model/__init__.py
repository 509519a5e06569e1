"""FrozenBiLM in Flax Linen.

Modules: `config` (dataclasses), `presets` (ConfigDict presets), `deberta` (the DeBERTa-v2 encoder with
adapters), `frozenbilm` (the model and its answer-head functions), `weights` (pretrained parameters),
`summary` (parameter counts). Nothing here knows about losses or data.
"""
