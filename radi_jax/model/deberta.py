"""The DeBERTa-v2 encoder in Flax Linen, with FrozenBiLM's bottleneck adapters.

Module and parameter names follow the Hugging Face PyTorch implementation (`embeddings`, `encoder`,
`layer_<i>`, `attention/self/query_proj`, ...) so that the weight converter is a renaming plus
transposes. With `scan_layers`, layer 0 (which the optional convolution follows) stays a separate
module and layers 1..L-1 are one scanned module `layers` whose parameters carry a leading
`[layers - 1]` axis; `radi_jax.model.weights` converts between the two layouts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from radi_jax.model.config import DebertaV2Config

Array = jax.Array


def activation(name: str) -> Callable[[Array], Array]:
  """The activation a Hugging Face config names (`gelu` is the exact, erf-based one)."""
  return {
      "gelu": functools.partial(jax.nn.gelu, approximate=False),
      "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
      "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
      "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
      "relu": jax.nn.relu,
      "tanh": jnp.tanh,
      "silu": jax.nn.silu,
      "swish": jax.nn.silu,
  }[name]


def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """Maps relative distances to log-spaced buckets: exact within `bucket_size // 2`, logarithmic beyond.

  The arithmetic is float32 like DeBERTa's, so the bucket edges (a `ceil`) agree with checkpoints.

  Args:
    relative_pos: integer distances, any shape.
    bucket_size: number of buckets on each side.
    max_position: distance at which the buckets saturate.

  Returns:
    Integer bucket ids, same shape.
  """
  mid = bucket_size // 2
  sign = np.sign(relative_pos)
  abs_pos = np.where((relative_pos < mid) & (relative_pos > -mid), mid - 1, np.abs(relative_pos))
  ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
  log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
  return np.where(abs_pos <= mid, relative_pos, log_pos * sign).astype(np.int64)


def relative_positions(query_size: int, key_size: int, config: DebertaV2Config) -> np.ndarray:
  """Relative position (bucket) of every key seen from every query: `[query, key]`, static."""
  rel = np.arange(query_size)[:, None] - np.arange(key_size)[None, :]
  if config.position_buckets > 0 and config.max_relative_distance > 0:
    rel = log_bucket_position(rel, config.position_buckets, config.max_relative_distance)
  return rel


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(config: DebertaV2Config, dtype: Any, name: str = "LayerNorm") -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, name=name)


def _near_zero(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
  # N(0, 1e-3) clipped at two standard deviations: a fresh adapter is almost the identity.
  return 1e-3 * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


class Adapter(nn.Module):
  """FrozenBiLM's bottleneck adapter, `x + up(dropout(relu(down(x))))`."""

  size: int
  dropout_rate: float
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x `[batch, length, hidden]`. Returns the same shape."""
    down = nn.Dense(self.size, dtype=self.dtype, kernel_init=_near_zero, bias_init=_near_zero, name="down")
    up = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_near_zero, bias_init=_near_zero, name="up")
    h = nn.Dropout(self.dropout_rate)(jax.nn.relu(down(x)), deterministic=self.deterministic)
    return x + up(h)


class DisentangledSelfAttention(nn.Module):
  """Self-attention over content and relative positions (DeBERTa's c2p / p2c terms)."""

  config: DebertaV2Config
  dtype: Any = jnp.float32
  deterministic: bool = True

  def _heads(self, x: Array) -> Array:
    return x.reshape(x.shape[:-1] + (self.config.num_attention_heads, -1))

  @nn.compact
  def __call__(self, hidden: Array, query: Array, mask: Array, rel_embeddings: Array | None) -> Array:
    """Attends from `query` to `hidden`.

    Args:
      hidden: keys and values, `[batch, length, hidden]`.
      query: query states, `[batch, length, hidden]` (equal to `hidden` outside the mask decoder).
      mask: `[batch, 1, length, length]` bool, True where query and key are both real tokens.
      rel_embeddings: `[2 * span, hidden]` relative position table, or None.

    Returns:
      Context vectors `[batch, length, heads * head_size]`.
    """
    cfg = self.config
    all_head = cfg.num_attention_heads * cfg.head_size
    query_proj = _dense(all_head, self.dtype, "query_proj")
    key_proj = _dense(all_head, self.dtype, "key_proj")
    q = self._heads(query_proj(query))  # [batch, q, heads, d]
    k = self._heads(key_proj(hidden))
    v = self._heads(_dense(all_head, self.dtype, "value_proj")(hidden))
    scale_factor = 1 + len(cfg.pos_att_type)
    scale = np.sqrt(cfg.head_size * scale_factor).astype(np.float32)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k / scale.astype(k.dtype))

    if cfg.relative_attention and cfg.pos_att_type:
      span = cfg.relative_span
      rel = nn.Dropout(cfg.hidden_dropout_prob)(rel_embeddings[: 2 * span], deterministic=self.deterministic)
      relative_pos = relative_positions(query.shape[1], hidden.shape[1], cfg)
      if "c2p" in cfg.pos_att_type:
        pos_key = key_proj(rel) if cfg.share_att_key else _dense(all_head, self.dtype, "pos_key_proj")(rel)
        c2p = jnp.einsum("bqhd,rhd->bhqr", q, self._heads(pos_key))
        index = np.clip(relative_pos + span, 0, 2 * span - 1)
        c2p = jnp.take_along_axis(c2p, jnp.broadcast_to(index, c2p.shape[:2] + index.shape), axis=-1)
        scores = scores + c2p / scale.astype(c2p.dtype)
      if "p2c" in cfg.pos_att_type:
        pos_query = query_proj(rel) if cfg.share_att_key else _dense(all_head, self.dtype, "pos_query_proj")(rel)
        p2c = jnp.einsum("bkhd,rhd->bhkr", k, self._heads(pos_query))
        key_pos = relative_positions(hidden.shape[1], hidden.shape[1], cfg)
        index = np.clip(-key_pos + span, 0, 2 * span - 1)
        p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(index, p2c.shape[:2] + index.shape), axis=-1)
        scores = scores + jnp.swapaxes(p2c, -1, -2) / scale.astype(p2c.dtype)

    # Masked entries get the most negative float rather than -inf, so a fully padded row softmaxes to
    # uniform weights exactly as in the PyTorch model instead of NaN.
    scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=self.deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return context.reshape(context.shape[:2] + (all_head,))


class DenseOutput(nn.Module):
  """`LayerNorm(residual + dropout(adapter(dense(x))))`, the end of the attention and feed-forward blocks."""

  config: DebertaV2Config
  adapter_size: int = 0
  adapter_dropout: float = 0.1
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, residual: Array) -> Array:
    """Args: x `[batch, length, in]`, residual `[batch, length, hidden]`. Returns `[batch, length, hidden]`."""
    h = _dense(self.config.hidden_size, self.dtype, "dense")(x)
    if self.adapter_size:
      h = Adapter(self.adapter_size, self.adapter_dropout, self.dtype, self.deterministic, name="adapter")(h)
    h = nn.Dropout(self.config.hidden_dropout_prob)(h, deterministic=self.deterministic)
    return _layer_norm(self.config, self.dtype)(h + residual)


class Attention(nn.Module):
  """Disentangled self-attention followed by its output block."""

  config: DebertaV2Config
  adapter_size: int = 0
  adapter_dropout: float = 0.1
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, hidden: Array, query: Array, mask: Array, rel_embeddings: Array | None) -> Array:
    context = DisentangledSelfAttention(self.config, self.dtype, self.deterministic, name="self")(
        hidden, query, mask, rel_embeddings)
    return DenseOutput(self.config, self.adapter_size, self.adapter_dropout, self.dtype, self.deterministic,
                       name="output")(context, query)


class Layer(nn.Module):
  """One transformer layer: attention block, then feed-forward block, each with an optional adapter."""

  config: DebertaV2Config
  adapter_size: int = 0
  adapter_dropout: float = 0.1
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, hidden: Array, query: Array | None, mask: Array, rel_embeddings: Array | None) -> Array:
    """Args: hidden `[batch, length, hidden]` (keys/values), query (same shape, None = hidden),
    mask `[batch, 1, length, length]`, rel_embeddings `[2 * span, hidden]` or None.

    Returns: `[batch, length, hidden]`.
    """
    query = hidden if query is None else query
    block = dict(config=self.config, adapter_size=self.adapter_size, adapter_dropout=self.adapter_dropout,
                 dtype=self.dtype, deterministic=self.deterministic)
    attended = Attention(**block, name="attention")(hidden, query, mask, rel_embeddings)
    h = _Intermediate(self.config, self.dtype, name="intermediate")(attended)
    h = activation(self.config.hidden_act)(h)
    return DenseOutput(**block, name="output")(h, attended)


class _Intermediate(nn.Module):
  config: DebertaV2Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _dense(self.config.intermediate_size, self.dtype, "dense")(x)


class ConvLayer(nn.Module):
  """DeBERTa-v2's convolution over the embeddings, merged into the output of layer 0."""

  config: DebertaV2Config
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, embeddings: Array, layer_output: Array, input_mask: Array) -> Array:
    """Args: embeddings and layer_output `[batch, length, hidden]`, input_mask `[batch, length]` bool.

    Returns: `[batch, length, hidden]`, zero at padded positions.
    """
    cfg = self.config
    k = cfg.conv_kernel_size
    conv = nn.Conv(cfg.hidden_size, (k,), padding=[((k - 1) // 2, (k - 1) // 2)],
                   feature_group_count=cfg.conv_groups, dtype=self.dtype,
                   kernel_init=nn.initializers.normal(0.02), name="conv")
    out = jnp.where(input_mask[..., None], conv(embeddings), 0)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=self.deterministic)
    out = activation(cfg.conv_act)(out)
    out = _layer_norm(cfg, self.dtype)(layer_output + out)
    return out * input_mask[..., None].astype(out.dtype)


class Embeddings(nn.Module):
  """Token embeddings, with FrozenBiLM's projected video frames placed before the text."""

  config: DebertaV2Config
  features_dim: int = 0
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids: Array, video: Array | None, mask: Array,
               token_type_ids: Array | None = None) -> Array:
    """Embeds `[video frames; text tokens]`.

    Args:
      input_ids: `[batch, text]` int.
      video: `[batch, frames, features_dim]` or None (text only).
      mask: `[batch, frames + text]`, 1 for real frames and tokens.
      token_type_ids: `[batch, frames + text]` int or None (all zero).

    Returns:
      `[batch, frames + text, hidden]`, zero at padded positions.
    """
    cfg = self.config
    width = cfg.word_embedding_size
    embed = functools.partial(nn.Embed, features=width, dtype=self.dtype,
                              embedding_init=nn.initializers.normal(0.02))
    x = embed(cfg.vocab_size, name="word_embeddings")(input_ids)
    if self.features_dim:
      # The frames join the word embeddings before positions and the embedding projection, so they
      # are projected to the word-embedding width (the hidden size in every FrozenBiLM checkpoint).
      frames = _dense(width, self.dtype, "linear_video")(video)
      x = jnp.concatenate([frames.astype(x.dtype), x], axis=1)
    length = x.shape[1]
    if cfg.position_biased_input:
      x = x + embed(cfg.max_position_embeddings, name="position_embeddings")(jnp.arange(length))[None]
    if cfg.type_vocab_size > 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros(x.shape[:2], jnp.int32)
      x = x + embed(cfg.type_vocab_size, name="token_type_embeddings")(token_type_ids)
    if width != cfg.hidden_size:
      x = _dense(cfg.hidden_size, self.dtype, "embed_proj", use_bias=False)(x)
    x = _layer_norm(cfg, self.dtype)(x)
    x = x * mask[..., None].astype(x.dtype)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=self.deterministic)


class _ScannedLayer(nn.Module):
  """`Layer` in the `(carry, x) -> (carry, y)` form `nn.scan` expects; y collects hidden states."""

  layer: Any
  config: DebertaV2Config
  adapter_size: int
  adapter_dropout: float
  dtype: Any
  deterministic: bool

  @nn.compact
  def __call__(self, hidden: Array, mask: Array, rel_embeddings: Array | None):
    out = self.layer(self.config, self.adapter_size, self.adapter_dropout, self.dtype, self.deterministic,
                     name="layer")(hidden, None, mask, rel_embeddings)
    return out, out


class Encoder(nn.Module):
  """The layer stack, relative embeddings, the optional convolution and the enhanced mask decoder.

  Attributes:
    enhanced_mask_decoder: also return DeBERTa's mask-decoder output: the last layer applied twice
      more with keys/values = the second-to-last hidden state, the first time with queries = that
      state plus the absolute position embeddings, the second time with queries = the first result.
      The position term is zero here: FrozenBiLM's backbones (position_biased_input = False) hold no
      absolute position embeddings, so its checkpoints were trained with zero `z_states`.
  """

  config: DebertaV2Config
  adapter_size: int = 0
  adapter_dropout: float = 0.1
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: bool = False
  enhanced_mask_decoder: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, embeddings: Array, attention_mask: Array) -> dict[str, Any]:
    """Runs the layers.

    Args:
      embeddings: `[batch, length, hidden]`.
      attention_mask: `[batch, length]`, 1 for real positions.

    Returns:
      dict with `hidden_states` (tuple of `layers + 1` arrays `[batch, length, hidden]`, the first the
      embeddings), `last_hidden_state`, and `decoder_output` (the mask decoder's, or the last hidden
      state when the decoder is off).
    """
    cfg = self.config
    input_mask = attention_mask.astype(bool)
    mask = input_mask[:, None, :, None] & input_mask[:, None, None, :]
    rel_embeddings = None
    if cfg.relative_attention:
      rel_embeddings = nn.Embed(2 * cfg.relative_span, cfg.hidden_size,
                                embedding_init=nn.initializers.normal(0.02), name="rel_embeddings").embedding
      if cfg.layer_norm_rel_embeddings:
        rel_embeddings = _layer_norm(cfg, self.dtype)(rel_embeddings)
      rel_embeddings = rel_embeddings.astype(self.dtype)

    layer_cls = nn.remat(Layer, prevent_cse=not self.scan_layers) if self.remat else Layer
    block = (cfg, self.adapter_size, self.adapter_dropout, self.dtype, self.deterministic)
    first = layer_cls(*block, name="layer_0")
    h = first(embeddings, None, mask, rel_embeddings)
    if cfg.conv_kernel_size > 0:
      h = ConvLayer(cfg, self.dtype, self.deterministic, name="conv")(embeddings, h, input_mask)
    hidden_states = [embeddings, h]
    num_rest = cfg.num_hidden_layers - 1
    last = first
    if self.scan_layers and num_rest > 0:
      scanned = nn.scan(_ScannedLayer, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=num_rest)
      h, stacked = scanned(layer_cls, *block, name="layers")(h, mask, rel_embeddings)
      hidden_states.extend(stacked[i] for i in range(num_rest))
    else:
      for i in range(1, cfg.num_hidden_layers):
        last = layer_cls(*block, name=f"layer_{i}")
        h = last(h, None, mask, rel_embeddings)
        hidden_states.append(h)

    decoder_output = h
    if self.enhanced_mask_decoder:
      if self.scan_layers and num_rest > 0:
        params = jax.tree.map(lambda x: x[-1], self.variables["params"]["layers"]["layer"])
        rngs = {} if self.deterministic else {"dropout": self.make_rng("dropout")}
        unbound = layer_cls(*block)
        apply_last = lambda kv, q: unbound.apply({"params": params}, kv, q, mask, rel_embeddings, rngs=rngs)
      else:
        apply_last = lambda kv, q: last(kv, q, mask, rel_embeddings)
      states = hidden_states[-2]
      query = states
      for _ in range(2):
        query = apply_last(states, query)
      decoder_output = query
    return {"hidden_states": tuple(hidden_states), "last_hidden_state": h, "decoder_output": decoder_output}


class DebertaV2Model(nn.Module):
  """Embeddings and encoder: `transformers.DebertaV2Model` plus FrozenBiLM's video input and adapters."""

  config: DebertaV2Config
  adapter_size: int = 0
  adapter_dropout: float = 0.1
  features_dim: int = 0
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: bool = False
  enhanced_mask_decoder: bool = False

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array, video: Array | None = None,
               video_mask: Array | None = None, token_type_ids: Array | None = None, *,
               deterministic: bool = True) -> dict[str, Any]:
    """Encodes `[video frames; text]`.

    Args:
      input_ids: `[batch, text]` int.
      attention_mask: `[batch, text]`.
      video: `[batch, frames, features_dim]` or None.
      video_mask: `[batch, frames]` or None (all frames real).
      token_type_ids: `[batch, frames + text]` or None.
      deterministic: disables dropout.

    Returns:
      The `Encoder` outputs (sequence axis = frames + text).
    """
    if self.features_dim and video is not None:
      if video_mask is None:
        video_mask = jnp.ones(video.shape[:2], attention_mask.dtype)
      attention_mask = jnp.concatenate([video_mask.astype(attention_mask.dtype), attention_mask], axis=1)
    embeddings = Embeddings(self.config, self.features_dim if video is not None else 0, self.dtype,
                            deterministic, name="embeddings")(input_ids, video, attention_mask, token_type_ids)
    return Encoder(self.config, self.adapter_size, self.adapter_dropout, self.dtype, self.scan_layers,
                   self.remat, self.enhanced_mask_decoder, deterministic, name="encoder")(embeddings, attention_mask)
