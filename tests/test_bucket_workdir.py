"""A workdir in a bucket (`--workdir=gs://bucket/run`): every file the run
reads or writes goes through etils.epath, checkpoints through orbax's own
GCS driver. Offline, a local GCS emulator (gcp-storage-emulator) stands in
for Cloud Storage: epath reaches it through fsspec's gcsfs
(STORAGE_EMULATOR_HOST), tensorstore through TENSORSTORE_GCS_HTTP_URL.
TensorBoard events are off here (TF's own gs:// client has no emulator
switch); everything else is the production code path."""
import json
import os
import socket

import numpy as np
import pytest

import tiny

pytest.importorskip('gcsfs')
server_lib = pytest.importorskip('gcp_storage_emulator.server')

BUCKET = 'mmd-test'


def _send_generation():
  """Two gaps between the emulator and Cloud Storage that tensorstore's
  conditional writes (OCDBT's manifest) trip over: Cloud Storage names an
  object's generation in the x-goog-generation header of a download, and
  its generations are small counters, where the emulator's are
  nanosecond clock readings that tensorstore reads back mangled."""
  import itertools
  import types
  from gcp_storage_emulator.handlers import objects
  counter = itertools.count(1)
  objects.time = types.SimpleNamespace(time_ns=lambda: next(counter))
  plain = objects.download
  if getattr(plain, 'sends_generation', False):
    return

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'],
                                 request.params['object_id'])
      response['x-goog-generation'] = str(obj['generation'])
      response['x-goog-metageneration'] = str(obj.get('metageneration', 1))
    except Exception:  # the handler itself answers 404
      pass
    return plain(request, response, storage, *args, **kwargs)
  download.sends_generation = True
  objects.download = download   # objects.get calls it for ?alt=media
  for _, methods in server_lib.HANDLERS:
    for verb, fn in list(methods.items()):
      if fn is plain:
        methods[verb] = download


@pytest.fixture
def bucket(monkeypatch):
  s = socket.socket()
  s.bind(('127.0.0.1', 0))
  port = s.getsockname()[1]
  s.close()
  _send_generation()
  server = server_lib.create_server('127.0.0.1', port, in_memory=True,
                                    default_bucket=BUCKET)
  server.start()
  url = f'http://127.0.0.1:{port}'
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', url)
  monkeypatch.setenv('TENSORSTORE_GCS_HTTP_URL', url)
  monkeypatch.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'offline')
  monkeypatch.setenv('TENSORSTORE_GCS_REQUEST_CONCURRENCY', '1')
  # epath: gcsfs (which honours the emulator), not TF's GCS client.
  monkeypatch.setenv('EPATH_USE_TF', 'false')
  from etils.epath import gpath
  gpath._is_tf_installed.cache_clear()
  yield f'gs://{BUCKET}'
  server.stop()
  gpath._is_tf_installed.cache_clear()


OVERRIDES = {'stages': ('teacher', 'evaluate'), 'log.tensorboard': False,
             'teacher.num_train_steps': 40, 'checkpoint.every_steps': 10,
             'eval.teacher_steps': (4,)}


def test_run_preempt_resume_eval_and_sample_in_a_bucket(
    bucket, tmp_path, monkeypatch):
  from mmd_jax.workdir import fs
  from mmd_jax.loop import preemption, train
  from mmd_jax.run import runner
  from mmd_jax import sample
  run = f'{bucket}/run'
  cfg = tiny.config('toy2d', 'tiny', OVERRIDES)

  # Pre-empted at its second poll (a log/checkpoint step), then resumed.
  polls = []
  real_agreed = preemption.SigtermFlag.agreed

  def stop_at_second_poll(self, poll):
    if poll:
      polls.append(1)
    return len(polls) == 2 or real_agreed(self, poll)
  monkeypatch.setattr(preemption.SigtermFlag, 'agreed', stop_at_second_poll)
  with pytest.raises(train.Preempted) as stopped:
    runner.run(cfg, run)
  assert 0 < stopped.value.step < 40
  steps_saved = sorted(int(n) for n in fs.listdir(f'{run}/teacher/checkpoints')
                       if n.isdigit())
  assert steps_saved[-1] == stopped.value.step, steps_saved
  monkeypatch.setattr(preemption.SigtermFlag, 'agreed', real_agreed)
  runner.run(cfg, run)

  # What the run left is in the bucket, and nothing leaked onto local disk.
  names = set(fs.listdir(run))
  assert {'config.json', 'report.json', 'report.md', 'teacher',
          'samples_teacher_ancestral.png'} <= names, names
  assert 'run.lock' not in names
  teacher = set(fs.listdir(f'{run}/teacher'))
  assert {'stage.json', 'metrics.jsonl', 'checkpoints', 'config.json',
          'samples.png'} <= teacher, teacher
  logged = [l for l in fs.read_text(f'{run}/teacher/metrics.jsonl').splitlines()]
  assert len(logged) >= 4, logged
  assert not os.path.exists('gs:') and not os.path.exists(
      os.path.join(os.path.dirname(__file__), '..', 'gs:'))

  # The resumed run ends where an uninterrupted local one does.
  local = tmp_path / 'local'
  runner.run(cfg, str(local))
  remote_x = sample.draw(f'{run}/teacher', 4, 256, seed=3)[0]
  local_x = sample.draw(str(local / 'teacher'), 4, 256, seed=3)[0]
  np.testing.assert_array_equal(remote_x, local_x)

  # --mode=eval rewrites the bucket's report; samples can be written there.
  def scores():
    rep = json.loads(fs.read_text(f'{run}/report.json'))
    return [(r['model'], r['steps'], r['metrics']) for r in rep['rows']]
  before = scores()
  fs.remove(f'{run}/report.json')
  runner.evaluate_workdir(cfg, run)
  assert scores() == before and before
  fs.save_npz(f'{run}/samples.npz', samples=remote_x)
  np.testing.assert_array_equal(fs.load_npz(f'{run}/samples.npz')['samples'],
                                remote_x)


def test_a_live_lock_in_a_bucket_refuses_a_second_run(bucket):
  from mmd_jax.workdir import fs, workdir_lock
  run = f'{bucket}/locked'
  with workdir_lock.WorkdirLock(run):
    assert fs.exists(f'{run}/run.lock')
    with pytest.raises(workdir_lock.WorkdirError, match='in use by another'):
      workdir_lock.WorkdirLock(run).acquire()
  assert not fs.exists(f'{run}/run.lock')
  # A holder from another host that stopped refreshing: taken over.
  fs.makedirs(run)
  fs.write_text(f'{run}/run.lock', '{"host": "gone", "pid": 1, '
                '"refreshed": 0}')
  with workdir_lock.WorkdirLock(run):
    assert 'gone' not in fs.read_text(f'{run}/run.lock')
