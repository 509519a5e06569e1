"""End-to-end training on configs/tiny.py: stages, resume after SIGKILL, errors, data parallelism."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from radi_jax import predict
from radi_jax.training import errors
from radi_jax.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  config.lock()
  return config


def run_cli(workdir, *flags, timeout=300, wait=True, env=None):
  command = [sys.executable, '-m', 'radi_jax.train', '--config', 'configs/tiny.py',
             '--workdir', str(workdir), *flags]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
  if not wait:
    return process
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


@pytest.fixture(scope='module')
def teacher_workdir(tmp_path_factory):
  """A workdir with a trained teacher and its cache (shared data dir, read-only for the tests)."""
  workdir = tmp_path_factory.mktemp('tiny') / 'run'
  trainer.train_and_evaluate(tiny_config(stage='teacher'), str(workdir))
  trainer.train_and_evaluate(tiny_config(stage='cache'), str(workdir))
  return workdir


def copy_workdir(source, target):
  shutil.copytree(source, target)
  return target


def test_students_eval_report_and_rerun_skips(teacher_workdir, tmp_path):
  workdir = copy_workdir(teacher_workdir, tmp_path / 'run')
  results = trainer.train_and_evaluate(tiny_config(stage='pipeline'), str(workdir))
  assert set(results) == {'teacher', 'student_radi_p', 'student_radi_l'}
  for run in results.values():
    for split in ('val', 'test'):
      for metric in ('acc1', 'hit5', 'ndcg5'):
        assert 0.0 <= run[split][metric] <= 1.0
      assert run[split]['hit5'] >= run[split]['acc1'] - 1e-9
  report = json.loads((workdir / 'report.json').read_text())
  assert report['results']['student_radi_p']['test']['acc1'] == results['student_radi_p']['test']['acc1']
  assert 'student_radi_l' in (workdir / 'report.md').read_text()
  rows = [json.loads(line) for line in
          (workdir / 'student_radi_p' / 'predictions_test.jsonl').read_text().splitlines()]
  assert len(rows) == 48 and len({r['index'] for r in rows}) == 48
  assert all(len(r['answers']) == 5 and r['scores'] == sorted(r['scores'], reverse=True)
             for r in rows)
  assert (workdir / 'student_radi_p' / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert os.listdir(workdir / 'student_radi_p' / 'tensorboard')
  history = [json.loads(l) for l in (workdir / 'student_radi_p' / 'history.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in history] == [1, 2]
  assert all(r['train/rank'] > 0 for r in history)

  # The predict entry point gives the eval stage's answers for the same question and video.
  raw = next((workdir / 'data').glob('synth_vqa_*')) / 'raw'
  with open(raw / 'test.csv') as f:
    first = next(csv.DictReader(f))
  with np.load(raw / 'clipvitl14.npz') as features:
    frames = features[first['video_id']]
  answers = predict.predict(tiny_config(), str(workdir), first['question'], frames,
                            run='student_radi_p', top_k=5)
  row = next(r for r in rows if r['index'] == 0)
  assert [a for a, _ in answers] == row['answers']
  np.testing.assert_allclose([p for _, p in answers], row['scores'], atol=1e-4)

  # Finished runs are not redone.
  done = workdir / 'student_radi_p' / 'done.json'
  before = done.stat().st_mtime_ns
  trainer.train_and_evaluate(tiny_config(stage='student'), str(workdir))
  assert done.stat().st_mtime_ns == before


def test_sigkill_during_student_resumes_to_the_same_result(teacher_workdir, tmp_path):
  # The same training config as the in-process student run above, so the compilation cache hits.
  flags = ['--config.stage=student', "--config.student.losses=('radi_p',)",
           '--config.train.checkpoint_every_steps=3']
  straight = copy_workdir(teacher_workdir, tmp_path / 'straight')
  code, _, err = run_cli(straight, *flags)
  assert code == 0, err

  killed = copy_workdir(teacher_workdir, tmp_path / 'killed')
  checkpoints = killed / 'student_radi_p' / 'checkpoints'
  process = run_cli(killed, *flags, wait=False)
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
      break
    time.sleep(0.02)
  assert process.poll() is None, 'the run ended before it could be killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / 'student_radi_p' / 'done.json').exists()
  code, _, err = run_cli(killed, *flags)
  assert code == 0, err
  assert 'resumed from step' in err

  a = json.loads((straight / 'student_radi_p' / 'done.json').read_text())
  b = json.loads((killed / 'student_radi_p' / 'done.json').read_text())
  assert a['best_step'] == b['best_step']
  for key in ('val/acc1', 'val/hit5', 'val/ndcg5'):
    assert abs(a[key] - b[key]) < 1e-6
  history_a = (straight / 'student_radi_p' / 'history.jsonl').read_text().splitlines()
  history_b = (killed / 'student_radi_p' / 'history.jsonl').read_text().splitlines()
  assert len(history_a) == len(history_b) == 2
  for ra, rb in zip(map(json.loads, history_a), map(json.loads, history_b)):
    np.testing.assert_allclose(ra['train/loss'], rb['train/loss'], rtol=1e-5)


def test_stale_cache_is_refused(teacher_workdir, tmp_path):
  workdir = copy_workdir(teacher_workdir, tmp_path / 'run')
  manifest_path = workdir / 'cache' / 'manifest.json'
  manifest = json.loads(manifest_path.read_text())
  manifest['dataset_fingerprint'] = 'another-dataset'
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(errors.StaleCacheError, match='stale teacher cache: dataset_fingerprint'):
    trainer.train_and_evaluate(tiny_config(stage='student'), str(workdir))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(teacher_workdir, tmp_path):
  workdir = copy_workdir(teacher_workdir, tmp_path / 'run')
  shutil.rmtree(workdir / 'teacher')
  config = tiny_config(stage='teacher', **{'train.learning_rate': 1e38,
                                           'train.grad_clip_norm': 1e30,
                                           'train.warmup_fraction': 0.0,
                                           'train.checkpoint_every_steps': 1})
  with pytest.raises(errors.TrainingDiverged, match=r'teacher: loss is (nan|inf) at step \d+ '
                                                      r'\(L_cls=.*L_rank=.*the last good checkpoint'):
    trainer.train_and_evaluate(config, str(workdir))
  steps_kept = sorted(int(p.name) for p in (workdir / 'teacher' / 'checkpoints').iterdir()
                      if p.name.isdigit())
  assert steps_kept, 'no good checkpoint kept'
  assert not (workdir / 'teacher' / 'done.json').exists()


def test_user_errors_are_one_line(tmp_path):
  missing = tmp_path / 'nowhere'
  code, _, err = run_cli(tmp_path / 'w', f'--config.data.manual_dir={missing}',
                         '--config.data.name=ivqa')
  assert code == 1
  assert err.strip().splitlines()[-1] == f'error: data.manual_dir: {missing} does not exist'
  assert 'Traceback' not in err

  code, _, err = run_cli(tmp_path / 'w', '--config.train.no_such_key=1')
  assert code != 0 and 'no_such_key' in err
  assert not (tmp_path / 'w').exists()


PARALLEL_SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {root!r})
from configs import tiny
from radi_jax.training import errors, parallel, steps, trainer
workdir = sys.argv[1]
out = {{'devices': jax.device_count()}}
for mode in ('jit', 'pmap'):
  config = tiny.get_config()
  config.parallel.mode = mode
  config.data.data_dir = workdir + '/data'
  if mode == 'pmap':  # pmap draws dropout per device; compare it with dropout off.
    config.model.adapter_dropout = 0.0
    config.model.deberta.hidden_dropout_prob = 0.0
    config.model.deberta.attention_probs_dropout_prob = 0.0
  config.lock()
  ctx = trainer.make_context(config, workdir)
  try:
    ctx.parallel.check_batch_size('train.batch_size', 12)
    out['bad'] = 'accepted'
  except errors.ConfigError as e:
    out['bad'] = str(e)
  trainable, frozen = trainer.initial_params(ctx, config.seed)
  setup = steps.LossSetup(seed=config.seed)
  params = {{'model': trainable, 'aux': {{}}}}
  tx = trainer.make_optimizer(config, 32)
  state = ctx.parallel.replicate(steps.init_train_state(params, tx, config.seed))
  fn = ctx.parallel.compile_train_step(steps.train_step, model=ctx.model, setup=setup, tx=tx,
                                       answer_mask=jnp.asarray(ctx.answer_mask))
  loader = trainer.data_lib.make_train_loader(ctx.data, config.data, batch_size=16, seed=0)
  losses = []
  for _ in range(3):
    state, m = fn(state, ctx.parallel.replicate(frozen), None, ctx.parallel.shard_batch(next(loader)))
    m = ctx.parallel.scalar(m)
    losses.append(float(m['loss_sum'] / m['count']))
  out[mode] = losses
print(json.dumps(out))
'''


def run_parallel(devices, workdir):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, '-c', PARALLEL_SCRIPT.format(root=ROOT), str(workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_in_jit_and_pmap_modes(teacher_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(teacher_workdir / 'data', workdir / 'data')
  one = run_parallel(1, workdir)
  eight = run_parallel(8, workdir)
  assert (one['devices'], eight['devices']) == (1, 8)
  for mode in ('jit', 'pmap'):
    np.testing.assert_allclose(eight[mode], one[mode], atol=1e-5, rtol=0)
    assert one[mode][0] != one[mode][2]  # The steps really train.
  assert eight['bad'] == 'train.batch_size=12 does not divide by the 8 devices; use a multiple of 8'


def test_any_ivqa_layout_directory_trains_with_only_manual_dir(tmp_path):
  raw = tmp_path / 'my_videos'
  subprocess.run([sys.executable, '-m', 'radi_jax.data.synth_vqa', '--out', str(raw), '--seed', '5',
                  '--num_categories', '4', '--concepts_per_category', '4', '--num_videos', '60',
                  '--train_questions', '96', '--val_questions', '16', '--test_questions', '16'],
                 cwd=ROOT, check=True, capture_output=True)
  vocabulary = json.loads((raw / 'vocab.json').read_text())
  code, _, err = run_cli(tmp_path / 'w', f'--config.data.manual_dir={raw}',
                         '--config.stage=teacher', '--config.train.num_epochs=1')
  assert code == 0, err
  done = json.loads((tmp_path / 'w' / 'teacher' / 'done.json').read_text())
  assert done['num_answers'] == len(vocabulary) != 60
  assert 0.0 <= done['val/acc1'] <= 1.0


def test_bfloat16_cache_round_trips(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from radi_jax.training import teacher_cache  # pylint: disable=g-import-not-at-top
  features = np.random.default_rng(0).normal(size=(5, 3)).astype(ml_dtypes.bfloat16)
  top = np.arange(10, dtype=np.int32).reshape(5, 2)
  teacher_cache.write(str(tmp_path / 'cache'), {'teacher_features': features, 'top_indices': top},
                      {'embeddings': np.ones((4, 3), np.float32)}, {'teacher_step': 7})
  cache = teacher_cache.TeacherCache(str(tmp_path / 'cache'), ['teacher_features', 'top_indices'])
  rows = cache.lookup(np.array([3, -1, 1]), np.array([True, False, True]))
  assert rows['teacher_features'].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(rows['teacher_features'].astype(np.float32),
                                features[[3, 0, 1]].astype(np.float32))
  np.testing.assert_array_equal(rows['top_indices'], top[[3, 0, 1]])
