"""iVQA on FrozenBiLM (DeBERTa-v2-xlarge): the teacher and the RADI students of Table 1.

Data: the FrozenBiLM release of iVQA (answer1..answer5 (five annotators); Table 1 trains on FrozenBiLM's soft targets), in `manual_dir`.
Weights: DeBERTa-v2-xlarge (optionally with the FrozenBiLM checkpoint) converted once with
  python -m radi_jax.tools.convert_weights --hf_dir DEBERTA_DIR [--frozenbilm_pth FROZENBILM.pth] --out WEIGHTS

Run (the variant after ':' is teacher | radi_p | radi_l, or a Table 2 scheme, see configs/paper.py):
  python -m radi_jax.train --config configs/ivqa.py:radi_p --workdir workdirs/ivqa \
      --config.data.manual_dir=DATA_DIR --config.data.tokenizer_dir=DEBERTA_DIR --config.pretrained=WEIGHTS

Expected test Acc@1 (paper, one RTX 3090, 20 epochs): teacher 39.6, RADI-P 43.5, RADI-L 42.9.
"""

from configs import paper


def get_config(variant: str = 'radi_p'):
  config = paper.get_config(variant)
  config.data.name = 'ivqa'
  config.data.train_targets = 'all'
  return config
