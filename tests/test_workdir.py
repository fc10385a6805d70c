"""One run per workdir, and one-line errors for what a workdir can hold
wrong: a live lock, damaged metadata, a config file that does not parse."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mmd_jax.workdir import workdir_lock
from mmd_jax.workdir.stage_meta import WorkdirError

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(w, *extra):
  return subprocess.run(
      [sys.executable, '-m', 'mmd_jax.main', f'--workdir={w}',
       '--config=configs/toy2d.py:tiny', '--config.stages=("teacher",)',
       *extra], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=300)


def _one_line_error(r):
  assert r.returncode == 2, tiny.why(r)
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  return last


def _write_lock(w, host, pid, age=0.0):
  path = os.path.join(w, workdir_lock.NAME)
  with open(path, 'w') as f:
    json.dump({'host': host, 'pid': pid, 'started': 'then'}, f)
  os.utime(path, (time.time() - age, time.time() - age))
  return path


def test_a_live_lock_refuses_and_a_dead_one_does_not(tmp_path):
  w = str(tmp_path)
  held = workdir_lock.WorkdirLock(w).acquire()
  with pytest.raises(WorkdirError, match=rf'pid {os.getpid()}'):
    workdir_lock.WorkdirLock(w).acquire()
  held.release()
  assert not os.path.exists(os.path.join(w, workdir_lock.NAME))
  with workdir_lock.WorkdirLock(w):
    pass

  # This host, a pid that has exited: taken over at once.
  p = subprocess.Popen(['true'])
  p.wait()
  _write_lock(w, socket.gethostname(), p.pid)
  workdir_lock.WorkdirLock(w).acquire().release()
  # Another host: live while it is refreshed, stale after stale_seconds.
  _write_lock(w, 'elsewhere', 1, age=10)
  with pytest.raises(WorkdirError, match='host elsewhere'):
    workdir_lock.WorkdirLock(w, stale_seconds=60).acquire()
  _write_lock(w, 'elsewhere', 1, age=120)
  workdir_lock.WorkdirLock(w, stale_seconds=60).acquire().release()


def test_the_holder_refreshes_its_lock(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_seconds=0.4).acquire()
  path = os.path.join(str(tmp_path), workdir_lock.NAME)
  os.utime(path, (time.time() - 100, time.time() - 100))
  time.sleep(0.3)
  assert time.time() - os.path.getmtime(path) < 5
  lock.release()


def test_a_second_run_on_a_held_workdir_stops_with_one_line(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    last = _one_line_error(_main(tmp_path))
  assert 'in use by another run' in last
  assert f'host {socket.gethostname()}, pid {os.getpid()}' in last


def test_damaged_metadata_and_config_syntax_give_one_line(tmp_path):
  w = tmp_path / 'w'
  (w / 'teacher').mkdir(parents=True)
  (w / 'teacher' / 'stage.json').write_text('{"finished_step": 4')
  last = _one_line_error(_main(w))
  assert 'teacher/stage.json is damaged' in last and 'remove' in last
  assert not (w / workdir_lock.NAME).exists()   # released on the way out

  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config(:\n  pass\n')
  r = subprocess.run([sys.executable, '-m', 'mmd_jax.main',
                      f'--workdir={w}', f'--config={bad}'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert _one_line_error(r) == f'error: {bad}:1: invalid syntax (config ' \
                               'file syntax)'


@pytest.fixture
def small_disk(tmp_path):
  """A 400 KB tmpfs (needs root, as CI's container has): room for one
  checkpoint of the tiny toy teacher, not two."""
  d = tmp_path / 'disk'
  d.mkdir()
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=400k', 'tmpfs',
                      str(d)], capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
  try:
    yield d
  finally:
    subprocess.run(['umount', '-l', str(d)], capture_output=True)


def test_a_full_disk_gives_one_line_and_keeps_the_last_checkpoint(small_disk):
  w = small_disk / 'w'
  args = ['--config.checkpoint.every_steps=20', '--config.checkpoint.keep=2']
  r = _main(w, '--config.teacher.num_train_steps=400', *args)
  last = _one_line_error(r)
  assert last.startswith(f'error: saving a checkpoint in {w}/teacher/'
                         'checkpoints failed: the disk is full; the last '
                         'complete checkpoint is step 20'), last
  assert 'sys.meta_path' not in r.stderr
  assert os.listdir(w / 'teacher' / 'checkpoints') == ['20']
  assert not (w / workdir_lock.NAME).exists()
  # Room again: the re-run resumes from that checkpoint and finishes.
  subprocess.run(['mount', '-o', 'remount,size=8m', str(small_disk)],
                 check=True)
  r = _main(w, '--config.teacher.num_train_steps=60', *args)
  assert r.returncode == 0, tiny.why(r)
  assert 'resuming at step 20 of 60' in r.stderr


def test_a_read_only_workdir_gives_one_line(tmp_path, monkeypatch):
  """Storage that refuses the lock file (EROFS here; root ignores chmod)."""
  import errno
  from mmd_jax.workdir import workdir_lock

  def read_only(path, *a, **k):
    raise OSError(errno.EROFS, 'Read-only file system', path)
  monkeypatch.setattr(workdir_lock.os, 'open', read_only)
  with pytest.raises(workdir_lock.WorkdirError) as e:
    with workdir_lock.holding(str(tmp_path)):
      pass
  assert str(e.value) == (f'workdir {tmp_path} is not writable (Read-only '
                          'file system); point --workdir at writable storage')


def test_a_bucket_that_does_not_answer_gives_one_line(monkeypatch):
  """The probe before any bucket read: a client error and a client that
  never answers both end in one line naming the workdir."""
  import threading
  from mmd_jax.workdir import fs

  class Refusing:
    def exists(self):
      raise RuntimeError('Could not resolve host: storage.googleapis.com\n'
                         '  (pages of retries)')
  monkeypatch.setattr(fs, 'path', lambda p: Refusing())
  with pytest.raises(fs.UnreachableError) as e:
    fs.check_reachable('gs://b/run', timeout_s=5)
  assert str(e.value) == (
      'workdir gs://b/run cannot be reached (RuntimeError: Could not resolve '
      'host: storage.googleapis.com); check the network and the storage '
      'credentials')
  never = threading.Event()

  class Silent:
    def exists(self):
      never.wait(60)
  monkeypatch.setattr(fs, 'path', lambda p: Silent())
  t0 = time.time()
  with pytest.raises(fs.UnreachableError, match='did not answer within 0 s'):
    fs.check_reachable('gs://b/run', timeout_s=0.3)
  assert time.time() - t0 < 5
  never.set()
  fs.check_reachable('/not/probed/when/local', timeout_s=0)


def test_a_bucket_workdir_without_network_is_one_line_within_60_s():
  """The whole command, with every request sent to a closed port."""
  closed = 'http://127.0.0.1:9'
  t0 = time.time()
  r = subprocess.run(
      [sys.executable, '-m', 'mmd_jax.main', '--workdir=gs://mmd-test/run',
       '--config=configs/toy2d.py:tiny'], cwd=ROOT, capture_output=True,
      text=True, timeout=120, env=dict(
          os.environ, JAX_PLATFORMS='cpu', MMD_JAX_BUCKET_TIMEOUT_S='10',
          https_proxy=closed, HTTPS_PROXY=closed, http_proxy=closed,
          HTTP_PROXY=closed, GCE_METADATA_HOST='127.0.0.1:9',
          NO_GCE_CHECK='true', GOOGLE_APPLICATION_CREDENTIALS='/nonexistent'))
  assert time.time() - t0 < 60
  line = _one_line_error(r)
  assert line.startswith('error: workdir gs://mmd-test/run '), line
  assert 'check the network and the storage credentials' in line
  assert len([l for l in r.stderr.splitlines() if not l.startswith('I')]) == 1, (
      r.stderr[-3000:])


def _tiny_teacher(w, steps, **over):
  import tiny
  tiny.run('toy2d', 'tiny', w, dict({
      'stages': ('teacher',), 'teacher.num_train_steps': steps,
      'checkpoint.every_steps': 10, 'eval.teacher_steps': ()}, **over))


def _listing(w):
  return sorted(os.path.relpath(os.path.join(r, f), w)
                for r, _, fs in os.walk(w) for f in fs)


def test_a_changed_config_on_resume_is_refused_not_treated_as_damage(
    tmp_path):
  from mmd_jax.run.checks import ConfigError
  from mmd_jax.workdir.checkpoint import CheckpointMismatchError
  w = tmp_path / 'w'
  _tiny_teacher(w, 20)
  before = {p: open(w / p, 'rb').read() for p in _listing(w)}
  # Recorded in stage.json: refused before anything is read or written.
  with pytest.raises(ConfigError) as e:
    _tiny_teacher(w, 40, **{'model.width': 64})
  assert str(e.value) == (
      f'{w / "teacher"} was trained with network.width=32; the config now '
      'asks for network.width=64; use the config it was trained with (its '
      'config.json), a new workdir, or remove it')
  assert {p: open(w / p, 'rb').read() for p in _listing(w)} == before
  # A directory from before stage.json recorded the network: the restore
  # itself tells a changed config from damage, and moves nothing.
  meta = json.load(open(w / 'teacher' / 'stage.json'))
  del meta['network']
  (w / 'teacher' / 'stage.json').write_text(json.dumps(meta))
  listing = _listing(w)
  with pytest.raises(CheckpointMismatchError) as e:
    _tiny_teacher(w, 40, **{'model.width': 64})
  assert 'holds a state of other shapes or fields than this config builds' in (
      str(e.value))
  assert '\n' not in str(e.value)
  assert _listing(w) == listing and not (
      w / 'teacher' / 'checkpoints_corrupt').exists()
  # Evaluating it (a plain restore) is the same one line.
  import tiny
  from mmd_jax.run import runner
  with pytest.raises(CheckpointMismatchError) as e:
    runner.evaluate_workdir(tiny.config('toy2d', 'tiny', {
        'model.width': 64, 'stages': ('teacher', 'evaluate')}), str(w))
  assert 'holds a state of other shapes or fields' in str(e.value)
  assert '\n' not in str(e.value)


def test_when_every_checkpoint_is_unreadable_the_run_stops(tmp_path):
  w = tmp_path / 'w'
  _tiny_teacher(w, 20)
  ckpts = w / 'teacher' / 'checkpoints'
  for root, _, files in os.walk(ckpts):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'\x00garbage')
  with pytest.raises(WorkdirError) as e:
    _tiny_teacher(w, 40)
  assert str(e.value).startswith(f'every checkpoint in {ckpts} is unreadable')
  assert not os.listdir(ckpts) and len(os.listdir(
      w / 'teacher' / 'checkpoints_corrupt')) == 2   # kept, not deleted
  # A second try does not quietly start from 0 beside them.
  with pytest.raises(WorkdirError, match='unreadable .moved earlier to '):
    _tiny_teacher(w, 40)
  assert not os.listdir(ckpts)


def _float_files(step_dir):
  """The array data files of a checkpoint, largest first."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / 'state')
           for f in fs if os.sep + 'd' + os.sep in os.path.join(r, f)]
  return sorted(files, key=os.path.getsize, reverse=True)


def test_a_damaged_checkpoint_is_detected_and_the_previous_one_restored(
    tmp_path):
  """Bytes changed inside an array (here: the saved checksums no longer
  match, as after a flip that leaves the file readable), and bytes flipped
  in its data file: either way that checkpoint is moved aside and the run
  resumes from the one before, with finite samples."""
  from mmd_jax import sample
  import numpy as np
  from mmd_jax.run.stage_dir import open_stage
  from mmd_jax.workdir.checkpoint import ChecksumError
  w = tmp_path / 'w'
  _tiny_teacher(w, 30, **{'checkpoint.keep': 3})
  ckpts = w / 'teacher' / 'checkpoints'
  meta_file = ckpts / '30' / 'meta' / 'metadata'
  meta = json.load(open(meta_file))
  meta['checksums'][0] ^= 1
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ChecksumError, match=r'step 30 is damaged: 1 array'):
    open_stage(str(w / 'teacher'))
  # Flipped bytes in the data file of step 20.
  path = _float_files(ckpts / '20')[0]
  data = bytearray(open(path, 'rb').read())
  for i in range(len(data) // 3, len(data) // 3 + 200):
    data[i] ^= 0xFF
  open(path, 'wb').write(bytes(data))
  _tiny_teacher(w, 40, **{'checkpoint.keep': 3})
  moved = sorted(n.split('-')[0] for n in os.listdir(
      w / 'teacher' / 'checkpoints_corrupt'))
  assert moved == ['20', '30'], moved
  assert json.load(open(w / 'teacher' / 'stage.json'))['finished_step'] == 40
  logged = [json.loads(l)['step'] for l in open(
      w / 'teacher' / 'metrics.jsonl')]
  assert logged == [10, 20, 30, 20, 30, 40], logged   # resumed at step 10
  x = sample.draw(str(w / 'teacher'), 4, 64)[0]
  assert np.all(np.isfinite(x))


def test_an_unfinished_teacher_directory_is_refused_unless_asked_for(
    tmp_path):
  import tiny
  from mmd_jax.run.checks import ConfigError
  w = tmp_path / 'w'
  _tiny_teacher(w, 20)
  meta = json.load(open(w / 'teacher' / 'stage.json'))
  meta['finished_step'] = None   # as a run stopped at its step-20 save
  (w / 'teacher' / 'stage.json').write_text(json.dumps(meta))
  over = {'stages': ('mm_alternating',), 'distill.sampling_steps': (2,),
          'teacher.checkpoint': str(w / 'teacher')}
  with pytest.raises(ConfigError) as e:
    tiny.run('toy2d', 'tiny_mm', tmp_path / 'w2', over)
  assert str(e.value) == (
      f'config.teacher.checkpoint: {w / "teacher"} holds a teacher whose '
      'training did not finish (its latest checkpoint is step 20); finish '
      'it, or set teacher.allow_unfinished=True to distil it as it stands')
  assert not (tmp_path / 'w2').exists()
  tiny.run('toy2d', 'tiny_mm', tmp_path / 'w2',
           dict(over, **{'teacher.allow_unfinished': True}))
  assert json.load(open(tmp_path / 'w2' / 'mm_alternating_k2' /
                        'stage.json'))['finished_step'] == 6
