"""The benchmark: its JSON contract, and FLOP counting through scans."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax import bench, loops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unrolled_flops_count_every_iteration():
  a = jnp.ones((64, 64))

  def f(a, n):
    return loops.scan(lambda c, _: (c @ a, None), a, length=n)[0]

  one = bench.count_flops(lambda a: f(a, 1), a)
  assert one == pytest.approx(2 * 64 ** 3, rel=0.01)
  assert bench.count_flops(lambda a: f(a, 7), a) == pytest.approx(7 * one,
                                                                   rel=0.01)
  # Without the switch XLA counts the body once: the reason for it.
  lowered = jax.jit(lambda a: f(a, 7)).lower(a)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost['flops'] == pytest.approx(one, rel=0.01)


def test_emd_flops_grow_linearly_in_langevin_steps():
  from configs import toy2d
  flops = {}
  for k in (1, 2, 4):
    c = toy2d.get_config('tiny_emd')
    c.emd.langevin_steps = k
    r = bench.run(c, num_steps=1, warmup=0, only=('emd',),
                  matmul_sizes=(128,))
    flops[k] = r['steps'][f'emd_K{k}']['flops_per_step']
  per_step = flops[2] - flops[1]
  assert per_step > 0
  np.testing.assert_allclose(flops[4] - flops[2], 2 * per_step, rtol=1e-3)


def test_bench_cli_writes_the_contract(tmp_path):
  out = tmp_path / 'bench.json'
  r = subprocess.run(
      [sys.executable, '-m', 'mmd_jax.bench', '--config=configs/toy2d.py:tiny',
       f'--output={out}', '--num_steps=3', '--warmup_steps=1',
       '--matmul_sizes=128', '--teacher_steps=2,8', '--sample_batch_size=64',
       '--config.emd.langevin_steps=2'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res['peak_matmul_flops'] > 0
  assert set(res['steps']) == {'teacher', 'mm_alternating', 'mm_parameter',
                               'emd_K2'}
  for name, s in res['steps'].items():
    for key in ('step_time_s', 'flops_per_step', 'achieved_flops', 'mfu',
                'peak_memory_bytes'):
      assert np.isfinite(s[key]) and s[key] > 0, (name, key)
    assert s['achieved_flops'] == pytest.approx(
        s['flops_per_step'] / s['step_time_s'])
    assert s['mfu'] == pytest.approx(s['achieved_flops'] /
                                     res['peak_matmul_flops'])
  assert res['steps']['teacher']['relative_to_teacher'] == 1.0
  # A distillation step does more work than a teacher step.
  for name in ('mm_alternating', 'mm_parameter', 'emd_K2'):
    assert (res['steps'][name]['flops_per_step'] >
            res['steps']['teacher']['flops_per_step'])
  assert set(res['sampling']) == {'teacher_k2', 'teacher_k8',
                                  'mm_alternating_k2', 'mm_parameter_k2',
                                  'emd_k1'}
  assert all(s['samples_per_s'] > 0 for s in res['sampling'].values())
  # The table names every step function.
  for name in res['steps']:
    assert name in r.stdout


def test_bench_refuses_unknown_step_function():
  from configs import toy2d
  from mmd_jax import config_check
  with pytest.raises(config_check.ConfigError, match='--only'):
    bench.run(toy2d.get_config('tiny'), only=('nope',))
