"""The paper's setting on the FrozenBiLM backbone (DeBERTa-v2-xlarge), shared by the dataset configs.

`get_config(variant)` picks one training scheme; the dataset configs add the dataset's facts. Variants:
  teacher          FrozenBiLM fine-tuned with L_cls: the teacher and the paper's baseline
  radi_p, radi_l   the RADI students (paper alphas 100 and 10)
  kd, dkd, ctkd, fitnet, rkd, label_smoothing, pseudo_labels
                   the distillation and label-refinement comparisons of Table 2
Every student variant runs teacher -> cache -> individual init -> student -> eval ('pipeline').
"""

import ml_collections

from configs import default
from radi_jax.model import presets

# variant -> (student losses, extra overrides as (section, key, value)).
VARIANTS = {
    'teacher': ((), ()),
    'radi_p': (('radi_p',), ()),
    'radi_l': (('radi_l',), ()),
    'kd': (('kd',), ()),
    'dkd': (('dkd',), ()),
    'ctkd': (('ctkd',), ()),
    'fitnet': (('fitnet',), ()),
    'rkd': (('rkd',), ()),
    'label_smoothing': (('none',), (('student', 'label_smoothing', 0.1),)),
    'pseudo_labels': (('none',), (('student', 'pseudo_labels_k', 5),)),
}


def get_config(variant: str = 'radi_p') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'config variant {variant!r}: expected one of {sorted(VARIANTS)}')
  config = default.get_config()
  config.model = presets.deberta_v2_xlarge()
  # Set --config.pretrained (converted weights) and --config.data.tokenizer_dir on the command line.
  losses, overrides = VARIANTS[variant]
  if variant == 'teacher':
    config.stage = 'teacher'
  else:
    config.stage = 'pipeline'
    config.student.losses = losses
  for section, key, value in overrides:
    config[section][key] = value
  return config
