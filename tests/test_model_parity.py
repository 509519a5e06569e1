"""Parity of the Flax DeBERTa-v2 / FrozenBiLM with `transformers`' PyTorch models on random weights.

Each case builds a random PyTorch model, saves it with `save_pretrained`, converts it with
`radi_jax.tools.convert_weights`, and compares every layer's hidden states (float32, ≤ 1e-4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from radi_jax.model import config as config_lib
from radi_jax.model import deberta as deberta_lib
from radi_jax.model import frozenbilm as fb
from radi_jax.model import summary
from radi_jax.model import weights
from radi_jax.tools import convert_weights

TOL = 1e-4

# Together these cover every option of the Hugging Face config surface.
CASES = {
    # xlarge-like: log buckets, c2p+p2c, shared keys, normalised rel. embeddings, conv, no abs. positions.
    "xlarge_like": dict(relative_attention=True, position_buckets=8, max_relative_positions=24,
                        pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
                        conv_kernel_size=3, conv_act="gelu", position_biased_input=False),
    # separate position projections (c2p only), clipped relative distances, factorised embeddings,
    # absolute positions and token types.
    "c2p_factorised": dict(relative_attention=True, max_relative_positions=6, pos_att_type="c2p",
                           share_att_key=False, embedding_size=24, position_biased_input=True,
                           type_vocab_size=2, hidden_act="gelu_new", num_hidden_layers=3),
    # p2c only, default relative range, wider grouped conv with tanh.
    "p2c_conv": dict(relative_attention=True, pos_att_type=["p2c"], share_att_key=False,
                     norm_rel_ebd="layer_norm", conv_kernel_size=5, conv_groups=2, conv_act="tanh",
                     position_biased_input=True),
    # no relative attention at all (BERT-like).
    "absolute_only": dict(relative_attention=False, position_biased_input=True, type_vocab_size=1),
}


def hf_config(**overrides):
  base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=40, layer_norm_eps=1e-7, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, pad_token_id=0)
  base.update(overrides)
  return transformers.DebertaV2Config(**base)


def random_torch_model(config, seed=0, cls=transformers.DebertaV2ForMaskedLM):
  torch.manual_seed(seed)
  model = cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm.weight" in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model


def text_batch(vocab, lengths=(21, 14, 6), seed=1):
  rng = np.random.default_rng(seed)
  length = max(lengths)
  ids = rng.integers(1, vocab, size=(len(lengths), length))
  mask = (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.int64)
  return ids * mask, mask


def convert(tmp_path, model, safe=True, name="ckpt"):
  hf_dir = tmp_path / f"{name}_hf"
  model.save_pretrained(hf_dir, safe_serialization=safe)
  out = convert_weights.convert(hf_dir, tmp_path / name)
  return weights.load_pretrained(out), config_lib.DebertaV2Config.from_hf_dict(model.config.to_dict())


def frozenbilm_config(deberta, **kw):
  kw = dict(dict(ds_factor=0, features_dim=0, num_answers=5), **kw)
  return config_lib.FrozenBiLMConfig(deberta=deberta, **kw)


def flax_params(config, pretrained):
  # Every leaf the parity checks read comes from the checkpoint, so the init can be zeros of the right shape.
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), summary.abstract_params(config))
  return weights.merge_pretrained(init, pretrained)


def flax_hidden_states(config, params, ids, mask, enhanced_mask_decoder=False):
  module = deberta_lib.DebertaV2Model(config.deberta, scan_layers=config.scan_layers,
                                      enhanced_mask_decoder=enhanced_mask_decoder)
  return jax.jit(lambda p: module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask)))(params["deberta"])


@pytest.mark.parametrize("case,scan,safe", [
    ("xlarge_like", True, False), ("xlarge_like", False, True), ("c2p_factorised", True, True),
    ("c2p_factorised", False, True), ("p2c_conv", True, True), ("absolute_only", True, True)])
def test_hidden_states_match_pytorch(tmp_path, case, scan, safe):
  torch_model = random_torch_model(hf_config(**CASES[case]))
  pretrained, deberta = convert(tmp_path, torch_model, safe=safe)
  config = frozenbilm_config(deberta, scan_layers=scan)
  params = flax_params(config, pretrained)
  ids, mask = text_batch(deberta.vocab_size)
  with torch.no_grad():
    expected = torch_model.deberta(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                   output_hidden_states=True).hidden_states
  got = flax_hidden_states(config, params, ids, mask)["hidden_states"]
  assert len(got) == len(expected) == deberta.num_hidden_layers + 1
  for layer, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_allclose(np.asarray(g), e.numpy(), atol=TOL, rtol=0, err_msg=f"hidden state {layer}")


def test_log_buckets_match_pytorch():
  rel = np.arange(-300, 301)
  for bucket, max_position in ((256, 512), (8, 24), (32, 100)):
    expected = transformers.models.deberta_v2.modeling_deberta_v2.make_log_bucket_position(
        torch.tensor(rel), bucket, max_position).long().numpy()
    np.testing.assert_array_equal(deberta_lib.log_bucket_position(rel, bucket, max_position), expected)


@pytest.mark.parametrize("scan", [True, False])
def test_enhanced_mask_decoder_matches_hf_layer(tmp_path, scan):
  torch_model = random_torch_model(hf_config(**dict(CASES["xlarge_like"], num_hidden_layers=3)))
  pretrained, deberta = convert(tmp_path, torch_model)
  config = frozenbilm_config(deberta, scan_layers=scan)
  params = flax_params(config, pretrained)
  ids, mask = text_batch(deberta.vocab_size)
  encoder = torch_model.deberta.encoder
  with torch.no_grad():
    states = torch_model.deberta(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                 output_hidden_states=True).hidden_states
    mask4 = encoder.get_attention_mask(torch.tensor(mask))
    rel_embeddings = encoder.get_rel_embedding()
    rel_pos = encoder.get_rel_pos(states[-2])
    query = states[-2]
    for _ in range(2):
      query = encoder.layer[-1](states[-2], mask4, query_states=query, relative_pos=rel_pos,
                                rel_embeddings=rel_embeddings)[0]
  got = flax_hidden_states(config, params, ids, mask, enhanced_mask_decoder=True)["decoder_output"]
  np.testing.assert_allclose(np.asarray(got), query.numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("legacy", [True, False])
def test_answer_head_matches_masked_lm_logits(tmp_path, legacy):
  torch_model = random_torch_model(hf_config(relative_attention=True, pos_att_type="c2p|p2c",
                                             position_buckets=8, max_relative_positions=24,
                                             position_biased_input=True, legacy=legacy))
  names = {n for n, _ in torch_model.named_parameters()}
  assert any(n.startswith("cls.predictions" if legacy else "lm_predictions.lm_head") for n in names)
  pretrained, deberta = convert(tmp_path, torch_model)
  answer_ids = np.array([[5], [17], [42], [96], [3]])
  config = frozenbilm_config(deberta, num_answers=len(answer_ids))
  params = fb.init_answer_head(flax_params(config, pretrained), answer_ids, np.ones_like(answer_ids, bool))
  ids, mask = text_batch(deberta.vocab_size)
  mask_position = np.array([4, 13, 0])
  out = fb.FrozenBiLM(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), None, None,
                                    jnp.asarray(mask_position), deterministic=True)
  with torch.no_grad():
    mlm = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  expected = mlm[np.arange(3), mask_position][:, answer_ids[:, 0]]
  np.testing.assert_allclose(np.asarray(out["logits"]), expected, atol=TOL * 10, rtol=TOL)
