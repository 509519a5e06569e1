"""Model presets: the `config.model` section of a training config.

Each preset is a ConfigDict with the Hugging Face DeBERTa-v2 fields under `deberta` and the
FrozenBiLM fields beside it; `radi_jax.model.config.model_config` turns it into a `FrozenBiLMConfig`.
"""

import dataclasses

import ml_collections

from radi_jax.model.config import DebertaV2Config


def _frozenbilm(deberta: DebertaV2Config) -> ml_collections.ConfigDict:
  deberta_dict = dataclasses.asdict(deberta)
  deberta_dict["pos_att_type"] = "|".join(deberta.pos_att_type)
  for name in ("embedding_size", "attention_head_size"):
    deberta_dict[name] = deberta_dict[name] or 0
  return ml_collections.ConfigDict(dict(
      deberta=deberta_dict,
      ds_factor=8,  # Adapter bottleneck = hidden_size // ds_factor; 0 = no adapters.
      adapter_dropout=0.1,  # Dropout inside the adapters.
      features_dim=768,  # CLIP ViT-L/14 frame features.
      max_feats=10,  # Frames per video.
      num_answers=1000,  # Answer vocabulary size; the trainer sets it from the data.
      max_atokens=5,  # Answer embedding = mean over the answer's first max_atokens tokens.
      dtype="float32",  # Compute dtype of the frozen backbone: 'float32' or 'bfloat16'.
      scan_layers=True,  # nn.scan over layers: compile time independent of depth.
      remat=False,  # Recompute layer activations in the backward pass (saves memory).
      mc_dropout_rate=0.1,  # Dropout on the answer-head input for MC-dropout scorings.
      freeze_last=True,  # Answer embeddings and bias are frozen.
  ))


def deberta_v2_xlarge() -> ml_collections.ConfigDict:
  """microsoft/deberta-v2-xlarge, FrozenBiLM's language model (~0.9B parameters, ~30M trainable)."""
  return _frozenbilm(DebertaV2Config(
      vocab_size=128100, hidden_size=1536, num_hidden_layers=24, num_attention_heads=24,
      intermediate_size=6144, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
      layer_norm_eps=1e-7, relative_attention=True, max_relative_positions=-1, position_buckets=256,
      position_biased_input=False, pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm",
      conv_kernel_size=3, conv_act="gelu", attention_head_size=64, legacy=True))


def tiny() -> ml_collections.ConfigDict:
  """A DeBERTa-v2 of the xlarge shape family small enough to train on a CPU in seconds."""
  config = _frozenbilm(DebertaV2Config(
      vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
      hidden_act="gelu", max_position_embeddings=128, type_vocab_size=0, layer_norm_eps=1e-7,
      relative_attention=True, max_relative_positions=-1, position_buckets=32, position_biased_input=False,
      pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm", conv_kernel_size=3,
      conv_act="gelu"))
  config.num_answers = 100
  return config
