"""A seconds-long configuration for tests and smoke runs: the demo, shrunk.

  python -m radi_jax.train --config configs/tiny.py --workdir /tmp/radi_tiny

A small synth_vqa (about 60 answers, 256 training questions), 2 epochs, students initialised from the
teacher. Accuracy is not the point; every stage runs for real.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.data.synth.num_categories = 4
  config.data.synth.concepts_per_category = 5
  config.data.synth.num_videos = 120
  config.data.synth.train_questions = 256
  config.data.synth.val_questions = 48
  config.data.synth.test_questions = 48
  config.train.num_epochs = 2
  config.train.batch_size = 16
  config.train.checkpoint_every_steps = 8
  config.eval.batch_size = 32
  config.student.init = 'teacher'
  config.student.losses = ('radi_p', 'radi_l')
  config.radi_p.num_top = 64
  config.radi_p.block_size = 16
  config.radi_l.k_hot = 8
  config.radi_l.n_cold = 4
  return config
