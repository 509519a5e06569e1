"""Default configuration: every field of a radi_jax run, documented once.

Other configs start from this one and change only what differs. Run any config with

  python -m radi_jax.train --config configs/<name>.py --workdir DIR [--config.a.b=value ...]

Unknown keys are an error (the config is locked).
"""

import ml_collections

from radi_jax.data import config as data_config
from radi_jax.model import presets


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Which stage to run: 'teacher' | 'cache' | 'student' | 'eval' | 'pipeline' (all of them in order,
  # skipping the finished ones, so re-running an interrupted pipeline resumes it).
  config.stage = 'pipeline'
  # Master seed: model init, dropout, data order. The 'individual' student init uses seed + 1.
  config.seed = 0

  # The FrozenBiLM model (radi_jax/model/presets.py documents its fields). `model.num_answers` is set
  # from the data at run time.
  config.model = presets.tiny()
  # Converted pretrained weights (an Orbax directory written by `python -m radi_jax.tools.convert_weights`);
  # '' = random initialisation.
  config.pretrained = ''
  # Train every weight, not only adapters, video projection and LayerNorms. Only sensible for a backbone
  # that is not pretrained (the demo).
  config.train_backbone = False
  # Also train the answer embeddings and bias (FrozenBiLM's `freeze_last = False`).
  config.train_answer_head = False

  # The data (radi_jax/data/config.py documents its fields). `data.data_dir` '' = <workdir>/data.
  config.data = data_config.default_config()

  # Optimisation, shared by the teacher, the 'individual' init run and the students (paper defaults).
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # Global batch, split over all devices of all processes.
  config.train.num_epochs = 20
  config.train.learning_rate = 5e-5  # Peak of the schedule: linear warmup, then linear decay to 0.
  config.train.warmup_fraction = 0.1
  config.train.weight_decay = 0.0  # AdamW decoupled weight decay.
  config.train.grad_clip_norm = 0.1  # Global-norm clipping.
  config.train.checkpoint_every_steps = 500  # Plus one at every epoch end.
  config.train.keep_checkpoints = 2  # Latest checkpoints kept, in addition to the best by val Acc@1.
  config.train.log_every_steps = 20

  # Student stage.
  config.student = ml_collections.ConfigDict()
  # Ranking / distillation losses to train students with, one student run each:
  # 'none' (L_cls only), 'radi_p', 'radi_l', 'kd', 'dkd', 'ctkd', 'fitnet', 'rkd'.
  config.student.losses = ('radi_p',)
  # Initialisation: 'scratch' | 'teacher' | 'individual' (an L_cls run with seed + 1; paper default).
  config.student.init = 'individual'
  # Label smoothing sigma of L_cls for students (paper's comparison: 0.1, 0.3, 0.5).
  config.student.label_smoothing = 0.0
  # Pseudo labels: add the teacher's top-k answers as positives to L_cls (0 = off; paper: 3, 5, 10).
  config.student.pseudo_labels_k = 0

  # Each loss section's `weight` is alpha in L = L_cls + alpha * L_rank for that student.

  # RADI-P, adaptive pairwise ranking distillation (Eq. 4-5, Algorithm 1).
  config.radi_p = ml_collections.ConfigDict()
  config.radi_p.weight = 100.0  # Paper's best alpha for RADI-P.
  config.radi_p.num_top = 2500  # N_p: keep the teacher's top N_p answers.
  config.radi_p.mc_samples = 10  # T Monte-Carlo dropout scorings of the teacher.
  config.radi_p.margin = 1.0  # m: mean margin (paper grid: 0.1, 1, 10).
  config.radi_p.lam_rel = 1.0  # Entropic regularisation lambda relative to mean(U).
  config.radi_p.strategy = 'ot'  # Margin weights: 'ot' | 'uniform' | 'random' | 'uncertainty'.
  config.radi_p.block_size = 512  # Rows per block of the hinge pass (0 = dense P x P).

  # RADI-L, partial listwise ranking distillation (Eq. 6-9).
  config.radi_l = ml_collections.ConfigDict()
  config.radi_l.weight = 10.0  # Paper's best alpha for RADI-L.
  config.radi_l.k_hot = 100  # Hot list: the teacher's top answers.
  config.radi_l.n_cold = 10  # Cold list: answers sampled from the rest without replacement.
  config.radi_l.sampling = 'zipf'  # 'zipf' | 'exp' | 'random' | 'full'.
  config.radi_l.decay = 1.0  # a in r^-a (Zipf) or exp(-a r) (Exp).
  config.radi_l.loss = 'listmle'  # 'listmle' | 'listnet' | 'stlistnet' | 'lambda_<ranknet|ndcg1|ndcg2|ndcg2pp>'.
  config.radi_l.beta = 1.0  # Gumbel noise scale of STListNet.

  # Distillation baselines (Table 2).
  config.kd = ml_collections.ConfigDict()
  config.kd.weight = 1.0
  config.kd.temperature = 4.0  # Vanilla KD: tau^2 * KL at temperature tau.
  config.dkd = ml_collections.ConfigDict()
  config.dkd.weight = 1.0
  config.dkd.alpha = 1.0  # Weight of target-class KD.
  config.dkd.beta = 8.0  # Weight of non-target-class KD.
  config.dkd.temperature = 4.0
  config.ctkd = ml_collections.ConfigDict()
  config.ctkd.weight = 1.0
  config.ctkd.min_temperature = 1.0  # The learned temperature stays in [min, max].
  config.ctkd.max_temperature = 21.0
  config.ctkd.lambda_max = 1.0  # Gradient-reversal strength at the end of the cosine curriculum.
  config.ctkd.curriculum_fraction = 0.5  # Fraction of training over which lambda rises from 0.
  config.fitnet = ml_collections.ConfigDict()
  config.fitnet.weight = 1.0  # Hint regression on the [MASK] representation.
  config.rkd = ml_collections.ConfigDict()
  config.rkd.weight = 1.0
  config.rkd.distance_weight = 25.0
  config.rkd.angle_weight = 50.0

  # Teacher cache (DESIGN §5): answer-head input vectors stored in this dtype ('float32' | 'bfloat16').
  config.cache = ml_collections.ConfigDict()
  config.cache.dtype = 'float32'

  # Evaluation.
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64  # Global eval batch.
  config.eval.splits = ('val', 'test')
  config.eval.top_k = 5  # Answers written per question in the predictions file.

  # Data parallelism: 'jit' (a mesh with a 'data' axis, batch sharded, state replicated and donated) or
  # 'pmap' (jax.pmap with pmean of gradients).
  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = 'jit'

  return config
