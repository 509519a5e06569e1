"""MSVD-QA on FrozenBiLM (DeBERTa-v2-xlarge): the teacher and the RADI students of Table 1.

Data: the FrozenBiLM release of MSVD-QA (one answer per question, question types), in `manual_dir`.
Weights: DeBERTa-v2-xlarge (optionally with the FrozenBiLM checkpoint) converted once with
  python -m radi_jax.tools.convert_weights --hf_dir DEBERTA_DIR [--frozenbilm_pth FROZENBILM.pth] --out WEIGHTS

Run (the variant after ':' is teacher | radi_p | radi_l, or a Table 2 scheme, see configs/paper.py):
  python -m radi_jax.train --config configs/msvd_qa.py:radi_p --workdir workdirs/msvd_qa \
      --config.data.manual_dir=DATA_DIR --config.data.tokenizer_dir=DEBERTA_DIR --config.pretrained=WEIGHTS

Expected test Acc@1 (paper, one RTX 3090, 20 epochs): teacher 54.8, RADI-P 55.8, RADI-L 56.0.
"""

from configs import paper


def get_config(variant: str = 'radi_p'):
  config = paper.get_config(variant)
  config.data.name = 'msvd_qa'
  config.data.train_targets = 'most_frequent'
  return config
