"""Two local processes (jax.distributed on 127.0.0.1, gloo collectives)
train the same teacher as one process, each reading different examples;
and a SIGTERM to one of them stops both at the same step, from which a
re-run continues the same trajectory."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(config, w, extra=()):
  return [sys.executable, '-m', 'mmd_jax.main', f'--config={config}',
          f'--workdir={w}', '--config.stages=("teacher",)', *extra]


def _last_step(w):
  path = w / 'teacher' / 'metrics.jsonl'
  lines = path.read_text().strip().splitlines() if path.exists() else []
  return json.loads(lines[-1])['step'] if lines else 0


def _two(config, w, env, extra, sigterm_at=None):
  """Runs 2 processes; with `sigterm_at`, SIGTERMs process 1 alone once
  the run has logged that step. Returns (return codes, stderrs)."""
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(config, w, [f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}', *extra]),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  if sigterm_at:
    deadline = time.time() + 300
    while (_last_step(w) < sigterm_at and procs[1].poll() is None
           and time.time() < deadline):
      time.sleep(0.05)
    assert procs[1].poll() is None, 'finished before it could be stopped'
    procs[1].send_signal(signal.SIGTERM)
  errs = [p.communicate(timeout=600)[1] for p in procs]
  return [p.returncode for p in procs], errs


# Long enough to be stopped midway. (Image data shards across processes by
# the same row arithmetic: the toy run covers it.)
LONG = ['--config.teacher.num_train_steps=200',
        '--config.checkpoint.every_steps=100', '--config.log.every_steps=10']


def test_two_processes_match_one(tmp_path):
  config, extra, stop = 'configs/toy2d.py:tiny', LONG, 40
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  one = tmp_path / 'one'
  r = subprocess.run(_cmd(config, one, extra), cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, tiny.why(r)

  two = tmp_path / 'two'
  codes, errs = _two(config, two, env, extra, sigterm_at=stop)
  assert codes == [143, 143], [e[-2000:] for e in errs]
  lines = [e.strip().splitlines()[-1] for e in errs]
  assert all(l.startswith('pre-empted: teacher: pre-empted (SIGTERM) at '
                          'step ') for l in lines), lines
  saved = {int(l.split('at step ')[1].split(';')[0]) for l in lines}
  assert len(saved) == 1 and stop <= min(saved) < 200, lines
  saved = saved.pop()
  codes, errs = _two(config, two, env, extra)
  assert codes == [0, 0], [e[-2000:] for e in errs]
  assert all(f'resuming at step {saved} of 200' in e for e in errs)

  a = [json.loads(l) for l in open(one / 'teacher' / 'metrics.jsonl')]
  b = [json.loads(l) for l in open(two / 'teacher' / 'metrics.jsonl')]
  # The stopped run's lines, then the re-run's: one per step.
  b = list({x['step']: x for x in b}.values())
  assert [x['step'] for x in a] == [x['step'] for x in b]
  np.testing.assert_allclose([x['loss'] for x in b], [x['loss'] for x in a],
                             rtol=1e-5)
  # Each process read its own half of every global batch.
  rows = []
  for i, err in enumerate(errs):
    m = re.search(rf'data: process {i} of 2 reads (\d+) of the (\d+) '
                  r'examples of each global batch; step 0 rows ([\d,]+)', err)
    assert m, err[-2000:]
    assert 2 * int(m.group(1)) == int(m.group(2))
    rows.append(set(m.group(3).split(',')))
  assert not rows[0] & rows[1]
  # Only process 0 wrote the stage's files: one metrics line per log step.
  assert len(b) == len(a)
