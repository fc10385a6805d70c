"""Two local processes (jax.distributed on 127.0.0.1, gloo collectives)
train the same teacher as one process, each reading different examples."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(config, w, extra=()):
  return [sys.executable, '-m', 'mmd_jax.main', f'--config={config}',
          f'--workdir={w}', '--config.stages=("teacher",)', *extra]


@pytest.mark.parametrize('config', ['configs/toy2d.py:tiny',
                                    'configs/digits.py:tiny'])
def test_two_processes_match_one(config, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  one = tmp_path / 'one'
  r = subprocess.run(_cmd(config, one), cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]

  two = tmp_path / 'two'
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(config, two, [f'--coordinator_address=127.0.0.1:{port}',
                         '--num_processes=2', f'--process_id={i}']),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  errs = []
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    errs.append(err)

  a = [json.loads(l) for l in open(one / 'teacher' / 'metrics.jsonl')]
  b = [json.loads(l) for l in open(two / 'teacher' / 'metrics.jsonl')]
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
