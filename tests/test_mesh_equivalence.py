"""Every stage's step gives the same losses and params on 1 device, on 8
simulated devices (data=8) and with FSDP (data=2, fsdp=4), with and without
gradient accumulation; and with accumulation the compiled step still
reduces its gradients once, outside every loop."""
import os
import subprocess
import sys

import pytest

import tiny

_SCRIPT = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
STAGES = tuple(sys.argv[1].split(','))
from configs import toy2d
from mmd_jax.device import collectives, parallel
from mmd_jax.run import config_check, runner
from mmd_jax.loop import train
from mmd_jax.data import load_dataset
from mmd_jax.plugins.teacher import SecondMoment
from mmd_jax.run import jobs
assert jax.device_count() == 8


def stages_for(accum):
  cfg = toy2d.get_config('tiny_emd')
  cfg.emd.langevin_steps = 2
  cfg.emd.sweep = ()
  cfg.grad_accum_steps = accum
  cfg.stages = ('teacher',) + tuple(s for s in STAGES if s != 'teacher')
  ds = load_dataset(cfg.data)
  plan = config_check.validate(cfg)
  env = runner.Env(cfg, '/tmp/unused', parallel.make_mesh(cfg.mesh), ds)
  theta = env.context(plan.jobs[0].method).spec.init_params(
      jax.random.PRNGKey(1), jnp.zeros((1, 2)))
  # Non-zero heads, so every path carries gradient.
  theta = jax.tree.map(lambda l: l + 0.05 * jax.random.normal(
      jax.random.PRNGKey(l.size), l.shape), theta)
  # v-hat = 1/4: Lambda = 2.
  arts = {'teacher_params': theta, 'teacher_frozen_dtype': 'float32',
          'teacher_second_moment': SecondMoment(
              jax.tree.map(lambda l: jnp.full(l.shape, 0.25), theta), 1,
              None, 0.0)}
  return env, ds, {p.method.name: (jobs.bound_loop(env, p, {
      a: arts[a] for a in p.method.needs}), p.job.batch_size)
      for p in plan.jobs}


MESHES = (('one', {'data': 1, 'fsdp': 1}, jax.devices()[:1]),
          ('dp8', {'data': -1, 'fsdp': 1}, None),
          ('dp2fsdp4', {'data': 2, 'fsdp': 4}, None))
RUNS = [(name, m, d, 1) for name, m, d in MESHES] + [
    (name + '_accum4', m, d, 4) for name, m, d in MESHES[1:]]
BUILT = {a: stages_for(a) for a in (1, 4)}
sharded_leaves = 0
for sname in STAGES:
  out, hlo = {}, {}
  for name, mesh_cfg, devs, accum in RUNS:
    env, ds, stages = BUILT[accum]
    stage, bs = stages[sname]
    mesh = parallel.make_mesh(mesh_cfg, devs)
    stream = env.stream(ds, bs, 0)
    state, sh = train.build_state(stage, jax.random.PRNGKey(0), stream, mesh)
    if name == 'dp2fsdp4':
      sharded_leaves += sum(s.spec != jax.sharding.PartitionSpec()
                            for s in jax.tree.leaves(sh))
    rep = parallel.replicated(mesh)
    key = jax.device_put(jax.random.PRNGKey(5), rep)
    batch0 = stream.global_batch_at(0, parallel.batch_sharding(mesh))
    step = parallel.jit(stage.step, mesh, in_shardings=(
        sh, parallel.batch_sharding(mesh), rep), out_shardings=(sh, rep),
        donate_argnums=(0,)).lower(state, batch0, key).compile()
    hlo[name] = collectives.count(step.as_text())
    losses = []
    for i in range(3):
      state, m = step(state, stream.global_batch_at(
          i, parallel.batch_sharding(mesh)), key)
      losses.append(float(m['loss']))
    # Parameters (trained, EMA, frozen copies); optimiser moments are left
    # out: MM's student gradient is a difference of near-equal terms, so
    # its moments carry ~1e-5 of summation-order noise on any mesh.
    out[name] = (np.array(losses), [
        v for p, v in jax.tree_util.tree_leaves_with_path(
            jax.device_get(stage.strip(state)))
        if 'opt' not in jax.tree_util.keystr(p)])
  for name, _, _, accum in RUNS[1:]:
    np.testing.assert_allclose(out[name][0], out['one'][0], rtol=1e-5,
                               atol=1e-7, err_msg=f'{sname} {name} losses')
    for a, b in zip(out[name][1], out['one'][1]):   # relative, per leaf
      if not np.issubdtype(b.dtype, np.floating) or not np.any(b):
        np.testing.assert_array_equal(a, b)
        continue
      err = np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b))
      assert err < 1e-5, (sname, name, a.shape, err)
  # One gradient reduction per step: none inside a loop body, and as many
  # collectives with 4 micro-batches as with 1.
  for mesh_name in ('dp8', 'dp2fsdp4'):
    one, four = hlo[mesh_name], hlo[mesh_name + '_accum4']
    assert collectives.reductions_in_loops(four) == 0, (sname, mesh_name, four)
    for kind in collectives.KINDS:
      assert collectives.total(four, kind) == collectives.total(one, kind), (
          sname, mesh_name, kind, one, four)
    assert collectives.total(one, 'all-reduce') > 0, (sname, one)
  assert collectives.total(hlo['dp2fsdp4'], 'reduce-scatter') > 0, sname
  print('STAGE_OK', sname, out['one'][0][:2], hlo['dp2fsdp4_accum4'])
assert sharded_leaves > 20, sharded_leaves   # FSDP really shards
print('MESH_OK')
'''


# mm_alternating at XLA's default code generation: its loss is a
# difference of near-equal terms (step 1's is ~1e-10), and at optimisation
# levels 0 and 1 the 1- and 8-device summation orders part by 4-5e-4 at
# step 3. The other steps agree at the suite's level 0 (conftest).
@pytest.mark.parametrize('stages,fast_compile', [
    ('teacher,mm_parameter,emd', True), ('mm_alternating', False)])
def test_every_step_is_the_same_on_1_and_8_devices_and_fsdp_and_reduces_once(
    repo_root, stages, fast_compile):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=tiny.xla_flags(8, fast_compile=fast_compile))
  r = subprocess.run([sys.executable, '-c', _SCRIPT, stages], cwd=repo_root,
                     env=env, capture_output=True, text=True, timeout=600)
  assert 'MESH_OK' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
