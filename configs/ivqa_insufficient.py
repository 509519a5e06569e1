"""iVQA with insufficient labels (Table 2): train on one answer per question, test on all five.

Training keeps only the most frequently annotated answer ('most_frequent'); evaluation scores every
annotation (Acc@1 / Hit@5 / nDCG@5). Variants (after ':'): teacher (the baseline), radi_p, radi_l, kd,
dkd, ctkd, fitnet, rkd, label_smoothing, pseudo_labels.

  python -m radi_jax.train --config configs/ivqa_insufficient.py:dkd --workdir workdirs/ivqa_t2 \
      --config.data.manual_dir=IVQA_DIR --config.data.tokenizer_dir=DEBERTA_DIR --config.pretrained=WEIGHTS

Expected (paper, Acc@1/Hit@5/nDCG@5): baseline 40.5/64.5/49.6, KD 41.3/66.7/51.2, DKD 41.4/67.4/51.5,
RADI-P 43.2/68.3/52.7, RADI-L 42.9/68.6/52.7. Runs sharing a workdir share the teacher and its cache.
"""

from configs import paper


def get_config(variant: str = 'radi_p'):
  config = paper.get_config(variant)
  config.data.name = 'ivqa'
  config.data.train_targets = 'most_frequent'
  return config
