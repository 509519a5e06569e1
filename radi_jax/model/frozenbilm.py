"""FrozenBiLM: a frozen DeBERTa-v2 with adapters, video frames in front of the text, and answers
scored at the `[MASK]` token.

The functions beside the module are the answer-head primitives the training stages share:
`answer_scores` (logits from the answer-head input vector), `mc_dropout_scores` (RADI-P's teacher
uncertainty, T scorings from one vector), `init_answer_head`, `answer_head` and `trainable_mask`.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from radi_jax.model.config import FrozenBiLMConfig
from radi_jax.model.deberta import DebertaV2Model, activation

Array = jax.Array
Params = Any

# Parameter names (any level of the path) that FrozenBiLM trains; everything else is frozen.
TRAINABLE_NAMES = ("adapter", "linear_video", "LayerNorm")
ANSWER_HEAD_NAMES = ("answer_embeddings", "answer_bias")


class MLMTransform(nn.Module):
  """The masked-LM head's transform, `LayerNorm(act(dense(h)))`, producing the answer-head input vector."""

  config: FrozenBiLMConfig

  @nn.compact
  def __call__(self, hidden: Array) -> Array:
    """Args: hidden `[batch, hidden]`. Returns `[batch, embedding_size]` (float32)."""
    cfg = self.config.deberta
    h = nn.Dense(cfg.word_embedding_size, kernel_init=nn.initializers.normal(0.02), name="dense")(hidden)
    h = activation(cfg.hidden_act)(h)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="LayerNorm")(h)


def answer_scores(answer_features: Array, answer_embeddings: Array, answer_bias: Array) -> Array:
  """Answer logits: `answer_features @ answer_embeddings.T + answer_bias`.

  Args:
    answer_features: `[batch, embedding]`, the answer-head input vector.
    answer_embeddings: `[answers, embedding]`.
    answer_bias: `[answers]`.

  Returns:
    `[batch, answers]` float32.
  """
  chex.assert_rank([answer_features, answer_embeddings, answer_bias], [2, 2, 1])
  chex.assert_equal_shape_suffix([answer_features, answer_embeddings], 1)
  logits = jnp.einsum("be,ne->bn", answer_features.astype(jnp.float32), answer_embeddings.astype(jnp.float32))
  return logits + answer_bias.astype(jnp.float32)


def mc_dropout_scores(answer_features: Array, answer_embeddings: Array, answer_bias: Array, example_keys: Array,
                      *, num_samples: int, rate: float) -> Array:
  """T Monte-Carlo-dropout scorings per example, dropout on the answer-head input vector only.

  Each (example, sample) mask comes from `jax.random.split(example_keys[b], num_samples)[t]`, so the
  same key yields the same T scorings wherever it is evaluated (teacher cache and student step).

  Args:
    answer_features: `[batch, embedding]`.
    answer_embeddings: `[answers, embedding]`.
    answer_bias: `[answers]`.
    example_keys: `[batch]` PRNG keys (typed, or raw `[batch, 2]` uint32), one per example.
    num_samples: T.
    rate: dropout rate.

  Returns:
    `[batch, num_samples, answers]` float32.
  """
  chex.assert_rank(answer_features, 2)
  chex.assert_axis_dimension(example_keys, 0, answer_features.shape[0])
  features = answer_features.astype(jnp.float32)

  def masks(key: Array) -> Array:
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, features.shape[1:]))(
        jax.random.split(key, num_samples))
    return keep.astype(jnp.float32) / (1.0 - rate)  # [samples, embedding]

  dropped = jax.vmap(masks)(example_keys) * features[:, None, :]  # [batch, samples, embedding]
  logits = jnp.einsum("bte,ne->btn", dropped, answer_embeddings.astype(jnp.float32))
  return logits + answer_bias.astype(jnp.float32)


class FrozenBiLM(nn.Module):
  """FrozenBiLM answer scoring.

  Attributes:
    config: the model configuration.
  """

  config: FrozenBiLMConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array, video: Array | None, video_mask: Array | None,
               mask_position: Array, *, deterministic: bool) -> dict[str, Array]:
    """Scores every answer for each example.

    Args:
      input_ids: `[batch, text]` int token ids of the prompt.
      attention_mask: `[batch, text]`, 1 for real tokens.
      video: `[batch, frames, features_dim]` frame features (None: no frames).
      video_mask: `[batch, frames]`, 1 for real frames.
      mask_position: `[batch]` int, index of `[MASK]` among the text tokens.
      deterministic: disables dropout (rng collection 'dropout' otherwise).

    Returns:
      dict with `logits` `[batch, answers]`, `answer_features` `[batch, embedding]` (the answer-head
      input vector), `mask_hidden` `[batch, hidden]` (the sequence output at `[MASK]` that feeds the
      head, after the mask decoder when it is on).
    """
    cfg = self.config
    batch = input_ids.shape[0]
    chex.assert_rank([input_ids, attention_mask, mask_position], [2, 2, 1])
    chex.assert_equal_shape([input_ids, attention_mask])
    if video is None or not cfg.features_dim:
      video = jnp.zeros((batch, 0, cfg.features_dim), jnp.float32)
      video_mask = jnp.zeros((batch, 0), attention_mask.dtype)
    chex.assert_rank([video, video_mask], [3, 2])
    chex.assert_axis_dimension(video, 2, cfg.features_dim)
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    encoded = DebertaV2Model(cfg.deberta, cfg.adapter_size, cfg.adapter_dropout, cfg.features_dim, dtype,
                             cfg.scan_layers, cfg.remat, cfg.use_enhanced_mask_decoder, name="deberta")(
                                 input_ids, attention_mask, video.astype(dtype), video_mask,
                                 deterministic=deterministic)
    sequence = encoded["decoder_output"]
    position = mask_position + video.shape[1]
    mask_hidden = sequence[jnp.arange(batch), position].astype(jnp.float32)
    answer_features = MLMTransform(cfg, name="mlm_transform")(mask_hidden)
    # The MLM output bias is not used in the forward; it is kept to initialise answer biases.
    self.param("mlm_bias", nn.initializers.zeros, (cfg.deberta.vocab_size,))
    answer_embeddings = self.param("answer_embeddings", nn.initializers.normal(0.02),
                                   (cfg.num_answers, cfg.deberta.word_embedding_size))
    answer_bias = self.param("answer_bias", nn.initializers.zeros, (cfg.num_answers,))
    return {"logits": answer_scores(answer_features, answer_embeddings, answer_bias),
            "answer_features": answer_features, "mask_hidden": mask_hidden}


def answer_head(params: Params) -> tuple[Array, Array]:
  """Returns `(answer_embeddings [answers, embedding], answer_bias [answers])` from a parameter tree."""
  return params["answer_embeddings"], params["answer_bias"]


def word_embeddings(params: Params) -> Array:
  """The token embedding table `[vocab, embedding]`."""
  return params["deberta"]["embeddings"]["word_embeddings"]["embedding"]


def init_answer_head(params: Params, answer_token_ids: Array, answer_token_mask: Array, *,
                     max_atokens: int = 5) -> Params:
  """Sets each answer's embedding and bias from its tokens, as FrozenBiLM does.

  Embedding = mean of the word embeddings of the answer's first `max_atokens` tokens; bias = mean of
  the MLM output bias over the same tokens. An answer without tokens gets zeros.

  Args:
    params: FrozenBiLM parameters.
    answer_token_ids: `[answers, tokens]` int, without special tokens.
    answer_token_mask: `[answers, tokens]` bool, True for real tokens.
    max_atokens: how many leading tokens to average.

  Returns:
    A new parameter tree whose answer head has `answers` rows.
  """
  chex.assert_rank([answer_token_ids, answer_token_mask], 2)
  chex.assert_equal_shape([answer_token_ids, answer_token_mask])
  ids = jnp.asarray(answer_token_ids)[:, :max_atokens]
  weight = jnp.asarray(answer_token_mask)[:, :max_atokens].astype(jnp.float32)
  count = jnp.maximum(weight.sum(axis=1, keepdims=True), 1.0)
  embeddings = jnp.take(word_embeddings(params), ids, axis=0)  # [answers, tokens, embedding]
  bias = jnp.take(params["mlm_bias"], ids, axis=0)  # [answers, tokens]
  new = dict(params)
  new["answer_embeddings"] = (embeddings * weight[..., None]).sum(axis=1) / count
  new["answer_bias"] = (bias * weight).sum(axis=1) / count[:, 0]
  return new


def trainable_mask(params: Params, *, train_answer_head: bool = False, train_backbone: bool = False) -> Params:
  """Which leaves FrozenBiLM trains: adapters, the video projection and every LayerNorm.

  Args:
    params: FrozenBiLM parameters (either layer layout).
    train_answer_head: also train the answer embeddings and bias (FrozenBiLM's `freeze_last=False`).
    train_backbone: train every leaf (for a backbone that is not pretrained, e.g. the demo's).

  Returns:
    A tree of bools with the structure of `params`.
  """
  def is_trainable(path, _) -> bool:
    names = [getattr(p, "key", str(p)) for p in path]
    if train_backbone:
      return True
    if any(n in ANSWER_HEAD_NAMES for n in names):
      return train_answer_head
    return any(n in TRAINABLE_NAMES for n in names)

  return jax.tree_util.tree_map_with_path(is_trainable, params)
