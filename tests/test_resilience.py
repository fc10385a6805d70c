"""Pre-emption, kills, corrupted checkpoints and device-count changes: a run
always ends at the trajectory an uninterrupted run takes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ARGS = ['--config=configs/toy2d.py:tiny', '--config.stages=("teacher",)',
        '--config.teacher.num_train_steps=1500',
        '--config.checkpoint.every_steps=400', '--config.log.every_steps=50']


def _env(devices=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _main(w, extra=(), devices=None, timeout=600):
  return subprocess.run(
      [sys.executable, '-m', 'mmd_jax.main', f'--workdir={w}', *ARGS, *extra],
      cwd=ROOT, env=_env(devices), capture_output=True, text=True,
      timeout=timeout)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _last_step(w):
  path = os.path.join(w, 'teacher', 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  lines = open(path).read().strip().splitlines()
  return json.loads(lines[-1])['step'] if lines else 0


def _interrupt(w, sig, at_step):
  """Starts the run and sends `sig` once it has logged `at_step`."""
  p = subprocess.Popen(
      [sys.executable, '-m', 'mmd_jax.main', f'--workdir={w}', *ARGS],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  deadline = time.time() + 300
  while _last_step(w) < at_step and p.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert p.poll() is None, 'finished before it could be interrupted'
  p.send_signal(sig)
  _, err = p.communicate(timeout=120)
  return p.returncode, err


def _samples(w):
  from mmd_jax import sample
  return sample.draw(os.path.join(w, 'teacher'), 8, 256, seed=5)[0]


def test_sigkill_and_sigterm_runs_resume_to_the_same_model(tmp_path):
  ref = tmp_path / 'ref'
  r = _main(ref)
  assert r.returncode == 0, r.stderr[-2000:]

  killed = tmp_path / 'killed'
  code, _ = _interrupt(killed, signal.SIGKILL, 600)
  assert code == -signal.SIGKILL
  assert _last_step(killed) < 1500
  r = _main(killed)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'resuming at step' in r.stderr

  termed = tmp_path / 'termed'
  code, err = _interrupt(termed, signal.SIGTERM, 500)
  assert code == 143, err[-2000:]
  line = err.strip().splitlines()[-1]
  assert line.startswith('pre-empted: teacher: pre-empted (SIGTERM) at step')
  saved = int(line.split('at step ')[1].split(';')[0])
  assert 500 <= saved < 1500
  r = _main(termed)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'resuming at step {saved} of 1500' in r.stderr

  want = _samples(ref)
  np.testing.assert_array_equal(_samples(killed), want)
  np.testing.assert_array_equal(_samples(termed), want)


def test_corrupted_latest_checkpoint_falls_back_and_is_kept(tmp_path):
  w = tmp_path / 'w'
  short = ['--config.teacher.num_train_steps=1200', '--config.checkpoint.keep=3']
  r = _main(w, short)
  assert r.returncode == 0, r.stderr[-2000:]
  ckpts = w / 'teacher' / 'checkpoints'
  assert sorted(os.listdir(ckpts)) == ['1200', '400', '800']
  for root, _, files in os.walk(ckpts / '1200'):
    for f in files:   # garble every file of the latest checkpoint
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'\x00garbage')
  r = _main(w, ['--config.teacher.num_train_steps=1600',
                '--config.checkpoint.keep=3'])
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'is unreadable' in r.stderr and 'resuming at step 800' in r.stderr
  # The unreadable checkpoint is moved aside, not deleted.
  moved = os.listdir(w / 'teacher' / 'checkpoints_corrupt')
  assert len(moved) == 1 and moved[0].startswith('1200-')
  assert json.load(open(w / 'teacher' / 'stage.json'))['finished_step'] == 1600


def test_checkpoint_from_8_devices_resumes_on_4(tmp_path):
  w = tmp_path / 'w'
  r = _main(w, ['--config.teacher.num_train_steps=400'], devices=8)
  assert r.returncode == 0, r.stderr[-2000:]
  r = _main(w, ['--config.teacher.num_train_steps=800',
                '--config.mesh.data=2', '--config.mesh.fsdp=2'], devices=4)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'resuming at step 400 of 800' in r.stderr
  # The same run on one device, uninterrupted: the same trajectory (up to
  # float summation order across devices).
  ref = tmp_path / 'ref'
  r = _main(ref, ['--config.teacher.num_train_steps=800'])
  assert r.returncode == 0, r.stderr[-2000:]
  a = [json.loads(l) for l in open(w / 'teacher' / 'metrics.jsonl')]
  b = [json.loads(l) for l in open(ref / 'teacher' / 'metrics.jsonl')]
  la = {x['step']: x['loss'] for x in a}
  lb = {x['step']: x['loss'] for x in b}
  for step in (50, 400, 450, 800):
    np.testing.assert_allclose(la[step], lb[step], rtol=1e-3)
