"""The weight converter: FrozenBiLM `.pth` overlay, and one-line errors that leave nothing behind."""

import numpy as np
import pytest
import torch

from radi_jax.model import config as config_lib
from radi_jax.model import weights
from radi_jax.tools import convert_weights
import transformers

HIDDEN, FEATURES, ANSWERS = 32, 12, 7


def random_torch_model(**overrides):
  config = transformers.DebertaV2Config(vocab_size=97, hidden_size=HIDDEN, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=48, max_position_embeddings=40,
                                        **overrides)
  torch.manual_seed(0)
  model = transformers.DebertaV2ForMaskedLM(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.2 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random DeBERTa-v2 masked LM with FrozenBiLM's head naming (`lm_predictions.lm_head`)."""
  directory = tmp_path_factory.mktemp("hf")
  model = random_torch_model(relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
                             position_biased_input=False, legacy=False)
  model.save_pretrained(directory)
  return directory, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def frozenbilm_state(state):
  """What FrozenBiLM's training saves: the backbone plus adapters, video projection and answer head."""
  rng = np.random.default_rng(0)
  out = {k: torch.tensor(v) for k, v in state.items() if not k.endswith("decoder.weight")}
  for layer in range(2):
    for block in ("attention.output", "output"):
      prefix = f"deberta.encoder.layer.{layer}.{block}.adapter"
      out[f"{prefix}.down.weight"] = torch.tensor(rng.normal(size=(HIDDEN // 8, HIDDEN)), dtype=torch.float32)
      out[f"{prefix}.down.bias"] = torch.tensor(rng.normal(size=HIDDEN // 8), dtype=torch.float32)
      out[f"{prefix}.up.weight"] = torch.tensor(rng.normal(size=(HIDDEN, HIDDEN // 8)), dtype=torch.float32)
      out[f"{prefix}.up.bias"] = torch.tensor(rng.normal(size=HIDDEN), dtype=torch.float32)
  out["deberta.embeddings.linear_video.weight"] = torch.tensor(rng.normal(size=(HIDDEN, FEATURES)), dtype=torch.float32)
  out["deberta.embeddings.linear_video.bias"] = torch.tensor(rng.normal(size=HIDDEN), dtype=torch.float32)
  out["answer_embeddings.weight"] = torch.tensor(rng.normal(size=(ANSWERS, HIDDEN)), dtype=torch.float32)
  out["answer_bias"] = torch.tensor(rng.normal(size=ANSWERS), dtype=torch.float32)
  return out


def test_frozenbilm_pth_overlay(tmp_path, hf_dir):
  directory, state = hf_dir
  pth_state = frozenbilm_state(state)
  changed = "deberta.encoder.layer.1.output.dense.weight"
  pth_state[changed] = pth_state[changed] + 1
  torch.save({"model": pth_state, "epoch": 3}, tmp_path / "frozenbilm.pth")
  exit_code = convert_weights.main(["--hf_dir", str(directory), "--frozenbilm_pth", str(tmp_path / "frozenbilm.pth"),
                                    "--out", str(tmp_path / "out"), "--features_dim", str(FEATURES)])
  assert exit_code == 0
  params = weights.load_pretrained(tmp_path / "out")
  layer0 = params["deberta"]["encoder"]["layer_0"]
  np.testing.assert_array_equal(layer0["attention"]["output"]["adapter"]["down"]["kernel"],
                                pth_state["deberta.encoder.layer.0.attention.output.adapter.down.weight"].numpy().T)
  np.testing.assert_array_equal(params["deberta"]["encoder"]["layer_1"]["output"]["dense"]["kernel"],
                                pth_state["deberta.encoder.layer.1.output.dense.weight"].numpy().T)
  np.testing.assert_array_equal(params["deberta"]["embeddings"]["linear_video"]["kernel"],
                                pth_state["deberta.embeddings.linear_video.weight"].numpy().T)
  np.testing.assert_array_equal(params["answer_embeddings"], pth_state["answer_embeddings.weight"].numpy())
  np.testing.assert_array_equal(params["mlm_bias"], state["lm_predictions.lm_head.bias"])
  np.testing.assert_array_equal(params["mlm_transform"]["LayerNorm"]["scale"],
                                state["lm_predictions.lm_head.LayerNorm.weight"])
  saved = (tmp_path / "out" / "config.json").read_text()
  assert '"position_buckets": 8' in saved and f'"features_dim": {FEATURES}' in saved




@pytest.mark.parametrize("edit,message", [
    (lambda s: s.__setitem__("deberta.encoder.layer.0.attention.self.query_proj.weight", torch.zeros(32, 31)),
     "tensor deberta.encoder.layer.0.attention.self.query_proj.weight has shape (32, 31), the model expects (32, 32)"),
    (lambda s: s.pop("deberta.encoder.rel_embeddings.weight"),
     "missing tensor deberta.encoder.rel_embeddings.weight (expected shape (16, 32))"),
    (lambda s: s.__setitem__("deberta.encoder.layer.0.extra.weight", torch.zeros(3)),
     "unexpected tensor deberta.encoder.layer.0.extra.weight (shape (3,))"),
], ids=["misshaped", "missing", "unexpected"])
def test_bad_checkpoint_is_one_line_and_leaves_nothing(tmp_path, hf_dir, capsys, edit, message):
  directory, state = hf_dir
  broken = tmp_path / "broken_hf"
  broken.mkdir()
  (broken / "config.json").write_text((directory / "config.json").read_text())
  tensors = {k: torch.tensor(v) for k, v in state.items()}
  edit(tensors)
  torch.save(tensors, broken / "pytorch_model.bin")
  (tmp_path / "keep.txt").write_text("earlier work")
  exit_code = convert_weights.main(["--hf_dir", str(broken), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_code == 1
  assert message in err and err.count("\n") == 1 and "Traceback" not in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_hf", "keep.txt"]


def test_existing_output_is_never_overwritten(tmp_path, hf_dir, capsys):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "mine.txt").write_text("keep")
  assert convert_weights.main(["--hf_dir", str(hf_dir[0]), "--out", str(tmp_path / "out")]) == 1
  assert "already exists" in capsys.readouterr().err
  assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def test_misshaped_pth_tensor_is_an_error(tmp_path, hf_dir):
  directory, state = hf_dir
  pth_state = frozenbilm_state(state)
  pth_state["deberta.encoder.layer.0.output.adapter.down.weight"] = torch.zeros(5, HIDDEN)
  torch.save({"model": pth_state}, tmp_path / "frozenbilm.pth")
  message = r"adapter.down.weight has shape \(5, 32\), the model expects \(4, 32\)"
  with pytest.raises(convert_weights.ConversionError, match=message):
    convert_weights.convert(directory, tmp_path / "out", tmp_path / "frozenbilm.pth", features_dim=FEATURES)
  assert not (tmp_path / "out").exists()
  assert isinstance(convert_weights.ConversionError("x"), config_lib.ModelError)
