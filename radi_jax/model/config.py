"""Configuration of the FrozenBiLM model: the Hugging Face DeBERTa-v2 fields plus FrozenBiLM's own.

`DebertaV2Config` keeps the Hugging Face field names so that a `config.json` of any DeBERTa-v2
checkpoint maps onto it one to one; `FrozenBiLMConfig` adds the adapters, the video input, the answer
head and the compute options. Both are frozen dataclasses, so a model built from one is hashable and
its config cannot drift after construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections


class ModelError(ValueError):
  """A one-line message about a model configuration or a weight tree that does not fit the model."""


_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "tanh", "silu", "swish")


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """The DeBERTa-v2 encoder, with the field names and defaults of `transformers.DebertaV2Config`.

  Fields that the Hugging Face class reads with `getattr(config, name, default)` (position buckets,
  `share_att_key`, the convolution layer, ...) are explicit here with the same defaults.
  """

  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1
  position_buckets: int = -1
  pad_token_id: int = 0
  position_biased_input: bool = True
  pos_att_type: tuple[str, ...] = ()
  share_att_key: bool = False
  norm_rel_ebd: str = "none"
  conv_kernel_size: int = 0
  conv_groups: int = 1
  conv_act: str = "tanh"
  embedding_size: int | None = None
  attention_head_size: int | None = None
  legacy: bool = True

  def __post_init__(self):
    pos_att_type = self.pos_att_type
    if isinstance(pos_att_type, str):
      pos_att_type = tuple(x.strip() for x in pos_att_type.lower().split("|") if x.strip())
    object.__setattr__(self, "pos_att_type", tuple(pos_att_type or ()))
    unknown = set(self.pos_att_type) - {"c2p", "p2c"}
    if unknown:
      raise ModelError(f"deberta.pos_att_type: expected a combination of 'c2p' and 'p2c', got {sorted(unknown)}")
    for name in ("hidden_act", "conv_act"):
      if getattr(self, name) not in _ACTIVATIONS:
        raise ModelError(f"deberta.{name}: expected one of {_ACTIVATIONS}, got {getattr(self, name)!r}")
    if not self.attention_head_size and self.hidden_size % self.num_attention_heads:
      raise ModelError(f"deberta.hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.conv_kernel_size > 0 and self.conv_kernel_size % 2 == 0:
      raise ModelError(f"deberta.conv_kernel_size: expected an odd size, got {self.conv_kernel_size}")

  @property
  def head_size(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def word_embedding_size(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def relative_span(self) -> int:
    """Half the number of relative-position embeddings (`att_span` in DeBERTa)."""
    if self.position_buckets > 0:
      return self.position_buckets
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

  @property
  def max_relative_distance(self) -> int:
    """The distance at which the log buckets saturate."""
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

  @property
  def layer_norm_rel_embeddings(self) -> bool:
    return "layer_norm" in [x.strip() for x in self.norm_rel_ebd.lower().split("|")]

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any]) -> "DebertaV2Config":
    """Reads a Hugging Face `config.json` dict; keys this model does not use are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in hf.items() if k in names}
    if values.get("pos_att_type") is None:
      values["pos_att_type"] = ()
    if values.get("pad_token_id") is None:
      values.pop("pad_token_id", None)
    return cls(**values)

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` dict that `transformers.DebertaV2Config(**d)` accepts."""
    hf = dataclasses.asdict(self)
    hf["pos_att_type"] = list(self.pos_att_type)
    for name in ("embedding_size", "attention_head_size"):
      if not hf[name]:
        del hf[name]
    hf["model_type"] = "deberta-v2"
    return hf


@dataclasses.dataclass(frozen=True)
class FrozenBiLMConfig:
  """FrozenBiLM on top of a DeBERTa-v2 encoder.

  Attributes:
    deberta: the language model.
    ds_factor: adapter bottleneck is `hidden_size // ds_factor`; 0 means no adapters.
    adapter_dropout: dropout inside the adapters.
    features_dim: width of the frame features (CLIP ViT-L/14: 768).
    max_feats: most frames per video.
    num_answers: size of the answer vocabulary of the answer head.
    max_atokens: answer embeddings average the first `max_atokens` tokens of each answer.
    dtype: compute dtype of the frozen backbone ('float32' or 'bfloat16'); parameters stay float32.
    scan_layers: run the encoder layers under `nn.scan` (stacked parameters, depth-independent compile).
    remat: recompute each layer's activations in the backward pass.
    mc_dropout_rate: dropout on the answer-head input vector for MC-dropout scorings.
    freeze_last: answer embeddings and bias are frozen.
    enhanced_mask_decoder: apply the last layer twice more before the head (DeBERTa's EMD); None means
      "when `position_biased_input` is False", as FrozenBiLM does.
  """

  deberta: DebertaV2Config = DebertaV2Config()
  ds_factor: int = 8
  adapter_dropout: float = 0.1
  features_dim: int = 768
  max_feats: int = 10
  num_answers: int = 1000
  max_atokens: int = 5
  dtype: str = "float32"
  scan_layers: bool = True
  remat: bool = False
  mc_dropout_rate: float = 0.1
  freeze_last: bool = True
  enhanced_mask_decoder: bool | None = None

  def __post_init__(self):
    if self.dtype not in ("float32", "bfloat16"):
      raise ModelError(f"model.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.ds_factor < 0 or (self.ds_factor and self.deberta.hidden_size < self.ds_factor):
      raise ModelError(f"model.ds_factor: expected 0 or a divisor smaller than hidden_size "
                       f"{self.deberta.hidden_size}, got {self.ds_factor}")

  @property
  def use_enhanced_mask_decoder(self) -> bool:
    if self.enhanced_mask_decoder is None:
      return not self.deberta.position_biased_input
    return self.enhanced_mask_decoder

  @property
  def adapter_size(self) -> int:
    return self.deberta.hidden_size // self.ds_factor if self.ds_factor else 0


def model_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> FrozenBiLMConfig:
  """Builds a `FrozenBiLMConfig` from the `config.model` section of a training config.

  Args:
    config: mapping with the `FrozenBiLMConfig` fields and the Hugging Face DeBERTa fields under
      `deberta`.

  Returns:
    The frozen model configuration.

  Raises:
    ModelError: on an unknown key.
  """
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  deberta = dict(values.pop("deberta", {}))
  deberta_names = {f.name for f in dataclasses.fields(DebertaV2Config)}
  for key in deberta:
    if key not in deberta_names:
      raise ModelError(f"model.deberta.{key}: unknown key; expected one of {sorted(deberta_names)}")
  names = {f.name for f in dataclasses.fields(FrozenBiLMConfig)} - {"deberta"}
  for key in values:
    if key not in names:
      raise ModelError(f"model.{key}: unknown key; expected one of {sorted(names)}")
  return FrozenBiLMConfig(deberta=DebertaV2Config(**deberta), **values)
