"""FrozenBiLM module behaviour: forward, adapters, trainable mask, MC dropout, answer head, layouts, summary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from radi_jax.model import config as config_lib
from radi_jax.model import frozenbilm as fb
from radi_jax.model import presets
from radi_jax.model import summary
from radi_jax.model import weights


def tiny_config(**overrides):
  return dataclasses.replace(config_lib.model_config(presets.tiny()), **overrides)


def batch(config, seed=0, size=3, text=9, frames=4):
  rng = np.random.default_rng(seed)
  lengths = np.array([text, text - 3, 4])[:size]
  mask = (np.arange(text)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(1, config.deberta.vocab_size, (size, text)) * mask
  video = rng.normal(size=(size, frames, config.features_dim)).astype(np.float32)
  video_mask = (np.arange(frames)[None] < np.array([4, 2, 3])[:size, None]).astype(np.int32)
  return tuple(map(jnp.asarray, (ids, mask, video, video_mask, lengths - 2)))


def init(config, inputs, seed=0):
  model = fb.FrozenBiLM(config)
  return jax.jit(lambda key: model.init(key, *inputs, deterministic=True)["params"])(jax.random.key(seed))


@pytest.fixture(scope="module")
def tiny():
  """The tiny preset, a batch, and its initial parameters, built once."""
  config = tiny_config()
  inputs = batch(config)
  return config, inputs, init(config, inputs)


@pytest.fixture(scope="module")
def tiny_eval(tiny):
  """The jitted evaluation-mode forward of the tiny preset on its batch."""
  config, inputs, params = tiny
  model = fb.FrozenBiLM(config)
  return jax.jit(lambda p: model.apply({"params": p}, *inputs, deterministic=True))(params)


@pytest.fixture(scope="module")
def tiny_grads(tiny):
  config, inputs, params = tiny
  weights_ = jax.random.normal(jax.random.key(3), (3, config.num_answers))
  return jax.jit(jax.grad(_loss(fb.FrozenBiLM(config), inputs, weights_)))(params)


def _loss(model, inputs, weights_):
  return lambda p: jnp.sum(model.apply({"params": p}, *inputs, deterministic=True)["logits"] * weights_)


def test_tiny_preset_jit_forward_runs_on_cpu(tiny, tiny_eval):
  config, inputs, params = tiny
  assert config == config_lib.model_config(presets.tiny())
  model = fb.FrozenBiLM(config)
  forward = jax.jit(lambda p, rng: model.apply({"params": p}, *inputs, deterministic=False, rngs={"dropout": rng}))
  out = forward(params, jax.random.key(1))
  assert out["logits"].shape == (3, config.num_answers)
  assert out["answer_features"].shape == (3, config.deberta.word_embedding_size)
  assert out["mask_hidden"].shape == (3, config.deberta.hidden_size)
  assert np.isfinite(np.asarray(out["logits"])).all() and np.isfinite(np.asarray(tiny_eval["logits"])).all()
  assert not np.allclose(out["logits"], tiny_eval["logits"])  # dropout was active in training mode


def _drop_adapters(tree):
  if isinstance(tree, dict):
    return {k: _drop_adapters(v) for k, v in tree.items() if k != "adapter"}
  return tree


def test_fresh_adapters_are_near_identity(tiny, tiny_eval):
  with_adapters, inputs, params = tiny
  assert with_adapters.ds_factor == 8
  assert "adapter" in params["deberta"]["encoder"]["layer_0"]["output"]
  plain_model = fb.FrozenBiLM(dataclasses.replace(with_adapters, ds_factor=0))
  plain = jax.jit(lambda p: plain_model.apply({"params": p}, *inputs, deterministic=True))(_drop_adapters(params))
  plain, adapted = plain["logits"], tiny_eval["logits"]
  relative = float(jnp.linalg.norm(adapted - plain) / jnp.linalg.norm(plain))
  assert 0 < relative < 1e-2


def test_frozen_leaves_get_no_gradient_step_and_no_adam_moments(tiny, tiny_grads):
  config, inputs, params = tiny
  mask = fb.trainable_mask(params)
  names = {"/".join(p.key for p in path): t for path, t in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert names["deberta/encoder/layer_0/attention/output/adapter/down/kernel"]
  assert names["deberta/embeddings/linear_video/kernel"] and names["deberta/encoder/LayerNorm/scale"]
  assert names["mlm_transform/LayerNorm/scale"] and names["deberta/encoder/conv/LayerNorm/bias"]
  assert not names["deberta/embeddings/word_embeddings/embedding"] and not names["answer_embeddings"]
  assert not names["deberta/encoder/layers/layer/attention/self/query_proj/kernel"]
  assert fb.trainable_mask(params, train_answer_head=True)["answer_bias"]
  assert all(jax.tree.leaves(fb.trainable_mask(params, train_backbone=True)))

  grads = tiny_grads
  labels = jax.tree.map(lambda t: "train" if t else "frozen", mask)
  optimizer = optax.multi_transform({"train": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels)
  state = optimizer.init(params)
  updates, state = optimizer.update(grads, state, params)
  for trainable, grad, update in zip(jax.tree.leaves(mask), jax.tree.leaves(grads), jax.tree.leaves(updates)):
    if trainable:
      assert np.any(np.asarray(update) != 0) or not np.any(np.asarray(grad) != 0)
    else:
      assert not np.any(np.asarray(update))
  moments = jax.tree.leaves(state.inner_states["train"].inner_state[0].mu)
  assert len(moments) == sum(jax.tree.leaves(mask))
  trainable_sizes = [np.size(p) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if t]
  assert sum(m.size for m in moments) == sum(trainable_sizes)
  assert jax.tree.leaves(state.inner_states["frozen"]) == []


def test_mc_dropout_scores_drop_the_input_vector_per_example_key():
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(3, 16)) + 3.0, jnp.float32)
  identity, zero = jnp.eye(16), jnp.zeros(16)  # scores = the dropped vector itself
  keys = jax.random.split(jax.random.key(7), 3)
  scores = np.asarray(fb.mc_dropout_scores(features, identity, zero, keys, num_samples=400, rate=0.25))
  assert scores.shape == (3, 400, 16)
  kept = scores != 0
  np.testing.assert_allclose(scores[kept], np.broadcast_to(np.asarray(features)[:, None] / 0.75, scores.shape)[kept],
                             rtol=1e-6)
  assert abs(1 - kept.mean() - 0.25) < 0.02
  # Same key → same scorings wherever the example sits in the batch; another key → others.
  alone = fb.mc_dropout_scores(features[2:], identity, zero, keys[2:], num_samples=400, rate=0.25)
  np.testing.assert_array_equal(np.asarray(alone)[0], scores[2])
  other = fb.mc_dropout_scores(features[2:], identity, zero, keys[:1], num_samples=400, rate=0.25)
  assert not np.array_equal(np.asarray(other)[0], scores[2])
  embeddings, bias = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32), jnp.asarray(rng.normal(size=5), jnp.float32)
  no_drop = fb.mc_dropout_scores(features, embeddings, bias, keys, num_samples=2, rate=0.0)
  np.testing.assert_allclose(no_drop[:, 1], np.asarray(features) @ np.asarray(embeddings).T + np.asarray(bias),
                             rtol=1e-5, atol=1e-5)


def test_init_answer_head_averages_first_tokens(tiny):
  config, _, params = tiny
  params = dict(params)
  params["mlm_bias"] = jnp.asarray(np.random.default_rng(1).normal(size=config.deberta.vocab_size), jnp.float32)
  ids = np.array([[5, 9, 2, 7, 8, 3, 4], [11, 0, 0, 0, 0, 0, 0], [0] * 7])
  token_mask = np.array([[1] * 7, [1, 0, 0, 0, 0, 0, 0], [0] * 7], bool)
  new = fb.init_answer_head(params, ids, token_mask, max_atokens=5)
  table, bias = np.asarray(fb.word_embeddings(params)), np.asarray(params["mlm_bias"])
  for a in range(3):
    tokens = [int(t) for t, m in zip(ids[a][:5], token_mask[a][:5]) if m]
    want_e = np.mean([table[t] for t in tokens], axis=0) if tokens else np.zeros(table.shape[1])
    want_b = np.mean([bias[t] for t in tokens]) if tokens else 0.0
    np.testing.assert_allclose(np.asarray(fb.answer_head(new)[0][a]), want_e, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(fb.answer_head(new)[1][a]), want_b, rtol=1e-6, atol=1e-7)


def test_scanned_and_unrolled_layouts_compute_the_same(tiny, tiny_eval):
  scanned, inputs, params = tiny
  unrolled = weights.to_unrolled_layout(params)
  assert "layer_1" in unrolled["deberta"]["encoder"] and "layers" not in unrolled["deberta"]["encoder"]
  apply = lambda config: jax.jit(lambda p: fb.FrozenBiLM(config).apply({"params": p}, *inputs, deterministic=True))
  out_scan = tiny_eval["logits"]
  out_unrolled = apply(dataclasses.replace(scanned, scan_layers=False))(unrolled)["logits"]
  np.testing.assert_allclose(out_scan, out_unrolled, atol=1e-5)
  back = weights.to_scan_layout(unrolled)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_bfloat16_backbone_and_remat(tiny, tiny_eval, tiny_grads):
  config, inputs, params = tiny
  weights_ = jax.random.normal(jax.random.key(3), (3, config.num_answers))
  remat_model = fb.FrozenBiLM(dataclasses.replace(config, remat=True))
  remat_grads = jax.jit(jax.grad(_loss(remat_model, inputs, weights_)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), tiny_grads, remat_grads)
  apply = lambda config: jax.jit(lambda p: fb.FrozenBiLM(config).apply({"params": p}, *inputs, deterministic=True))
  bf16 = apply(dataclasses.replace(config, dtype="bfloat16"))(params)
  f32 = tiny_eval
  assert bf16["logits"].dtype == jnp.float32
  assert float(jnp.linalg.norm(bf16["logits"] - f32["logits"]) / jnp.linalg.norm(f32["logits"])) < 5e-2
  assert not np.allclose(bf16["logits"], f32["logits"], atol=1e-7)


def test_summary_of_xlarge_reports_the_papers_30m_trainable():
  result = summary.summarize(config_lib.model_config(presets.deberta_v2_xlarge()))
  assert 29e6 <= result.trainable <= 31e6
  assert 0.85e9 <= result.total <= 0.95e9
  text = summary.format_summary(result)
  assert "deberta/encoder/layers" in text and "trainable" in text


def test_summary_counts_match_real_initialisation(tiny):
  config, _, params = tiny
  mask = fb.trainable_mask(params)
  real_trainable = sum(np.size(p) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if t)
  result = summary.summarize(config)
  assert result.total == sum(np.size(p) for p in jax.tree.leaves(params))
  assert result.trainable == real_trainable


def test_merge_pretrained_keeps_missing_leaves_and_rejects_misshaped_ones(tiny):
  _, _, fresh = tiny
  other = jax.tree.map(lambda x: np.asarray(x) + 1.0, fresh)
  partial = weights.to_unrolled_layout(_drop_adapters(other))
  del partial["deberta"]["embeddings"]["linear_video"]
  merged = weights.merge_pretrained(fresh, partial)
  np.testing.assert_array_equal(merged["deberta"]["embeddings"]["linear_video"]["kernel"],
                                fresh["deberta"]["embeddings"]["linear_video"]["kernel"])
  np.testing.assert_array_equal(merged["deberta"]["encoder"]["layers"]["layer"]["output"]["dense"]["kernel"],
                                other["deberta"]["encoder"]["layers"]["layer"]["output"]["dense"]["kernel"])
  loaded, missing = weights.coverage(fresh, partial)
  assert "deberta/embeddings/linear_video/kernel" in missing and "mlm_bias" in loaded
  partial["mlm_bias"] = np.zeros(7, np.float32)
  with pytest.raises(config_lib.ModelError, match=r"mlm_bias has shape \(7,\), the model expects \(1000,\)"):
    weights.merge_pretrained(fresh, partial)


def test_model_config_rejects_unknown_keys():
  preset = presets.tiny()
  preset.unlock()
  preset.deberta.hiden_size = 3
  with pytest.raises(config_lib.ModelError, match="model.deberta.hiden_size: unknown key"):
    config_lib.model_config(preset)
