"""The embedded demo: teacher -> cache -> individual init -> RADI-P and RADI-L students -> eval on synth_vqa.

Runs the whole method on the generated synth_vqa dataset (iVQA layout: five annotators, several correct
answers per question, training on the most frequent one) with a tiny DeBERTa that is trained from scratch
(its backbone is not pretrained, so every weight trains). A few CPU minutes:

  python -m radi_jax.train --config configs/demo.py --workdir workdirs/demo

Writes workdirs/demo/report.md. The README quotes what it reached on 2 CPU cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.stage = 'pipeline'
  config.train_backbone = True
  config.train.num_epochs = 6
  config.train.batch_size = 32
  config.train.learning_rate = 1e-3
  config.train.grad_clip_norm = 1.0
  config.train.checkpoint_every_steps = 1000
  config.train.log_every_steps = 10
  config.student.losses = ('radi_p', 'radi_l')
  config.student.init = 'individual'
  config.radi_p.num_top = 500  # Every answer of synth_vqa: no truncation.
  config.radi_p.block_size = 128
  config.eval.batch_size = 128
  return config
