"""Top answers for one question about one video, from a trained run (the paper's Figure 7 view).

  python -m radi_jax.predict --config configs/demo.py --workdir workdirs/demo \
      --question "What animal is in the video?" --features video.npy [--run student_radi_p]

`--features` is a `.npy` file of frame features `[frames, 768]` (CLIP ViT-L/14, as in the dataset).
Prints the top answers with their probabilities, one per line.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

def define_flags() -> None:
  """Command-line flags; defined only when run as a program (the module is also a library)."""
  config_flags.DEFINE_config_file('config', None, 'The run config file.', lock_config=True)
  flags.DEFINE_string('workdir', 'workdirs/run', 'The trained run directory.')
  flags.DEFINE_string('question', None, 'The question.')
  flags.DEFINE_string('features', None, '.npy file of frame features [frames, D].')
  flags.DEFINE_string('run', None, 'Which trained model: teacher, individual, student_<loss> '
                      '(default: the first finished student of the config, else the teacher).')
  flags.DEFINE_integer('top_k', 5, 'Answers to print.')
  flags.mark_flags_as_required(['config', 'question', 'features'])


def predict(config, workdir: str, question: str, frames, *, run: str | None = None,
            top_k: int = 5) -> list[tuple[str, float]]:
  """The `top_k` (answer, probability) pairs of a trained run for one question and video.

  Args:
    config: the run's config.
    workdir: the run's workdir.
    question: free text.
    frames: `[frames, D]` frame features.
    run: the model to use (see the flag).
    top_k: answers returned.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from radi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from radi_jax.data import prompt  # pylint: disable=g-import-not-at-top
  from radi_jax.training import errors  # pylint: disable=g-import-not-at-top
  from radi_jax.training import steps  # pylint: disable=g-import-not-at-top
  from radi_jax.training import trainer  # pylint: disable=g-import-not-at-top

  frames = np.asarray(frames, np.float32)
  if frames.ndim != 2 or frames.shape[1] != config.data.features_dim:
    raise errors.ConfigError(f'--features: expected an array [frames, {config.data.features_dim}], '
                             f'got shape {list(frames.shape)}')
  if not question.strip():
    raise errors.ConfigError('--question: expected a non-empty question')
  ctx = trainer.make_context(config, workdir)
  if run is None:
    students = [trainer.student_run_name(loss) for loss in config.student.losses]
    finished = [name for name in students if trainer.is_finished(ctx, name)]
    run = finished[0] if finished else trainer.TEACHER
  runs = {name: (seed, setup) for name, seed, setup in trainer.evaluated_runs(ctx)}
  if run not in runs:
    raise errors.ConfigError(f'--run: {run!r} is not a finished run of {workdir}; '
                             f'finished: {sorted(runs)}')
  seed, setup = runs[run]
  params, _ = trainer.restore_best_params(ctx, run, seed=seed, setup=setup)
  ids, mask_position = prompt.tokenize_prompts(ctx.data.tokenizer, [question], config.data.max_tokens)
  video, video_mask = pipeline.sample_frames(frames, config.data.max_feats)
  batch = {'input_ids': ids[0][None], 'attention_mask': np.ones_like(ids[0])[None],
           'video': video[None], 'video_mask': video_mask[None], 'mask_position': mask_position}
  logits = jax.jit(lambda p, b: steps.forward(p, b, model=ctx.model)['logits'])(params, batch)
  probabilities = np.asarray(jax.nn.softmax(logits[0]))
  order = np.argsort(-probabilities)[:top_k]
  return [(ctx.data.answers[i], float(probabilities[i])) for i in order]


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top

  from radi_jax import user_errors  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  try:
    try:
      frames = np.load(values.features)
    except (OSError, ValueError) as e:
      raise user_errors.UserError(f'--features: cannot read {values.features} as .npy ({e})') from None
    answers = predict(values.config, values.workdir, values.question, frames, run=values.run,
                      top_k=values.top_k)
  except user_errors.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for answer, probability in answers:
    print(f'{probability:8.4f}  {answer}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
