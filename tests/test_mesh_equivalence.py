"""Every stage's step gives the same losses and params on 1 device, on 8
simulated devices (data=8) and with FSDP (data=2, fsdp=4)."""
import os
import subprocess
import sys

_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from configs import toy2d
from mmd_jax import config_check, parallel, runner, train
from mmd_jax.data import load_dataset
assert jax.device_count() == 8
cfg = toy2d.get_config('tiny_emd')
cfg.emd.langevin_steps = 2
cfg.emd.sweep = ()
cfg.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'emd')
ds = load_dataset(cfg.data)
plan = config_check.validate(cfg)
env = runner.Env(cfg, '/tmp/unused', parallel.make_mesh(cfg.mesh), ds)
theta = env.spec.init_params(jax.random.PRNGKey(1), jnp.zeros((1, 2)))
# Non-zero heads, so every path carries gradient.
theta = jax.tree.map(lambda l: l + 0.05 * jax.random.normal(
    jax.random.PRNGKey(l.size), l.shape), theta)
# v-hat = 1/4: Lambda = 2.
arts = {'teacher_params': theta,
        'teacher_second_moment': lambda n: jax.tree.map(
            lambda l: jnp.full(l.shape, 0.25), theta)}
STAGES = {s.method.name: (runner.build_stage(env, s, {
    a: arts[a] for a in s.method.needs}), s.job.batch_size)
    for s in plan.steps}
MESHES = (('one', {'data': 1, 'fsdp': 1}, jax.devices()[:1]),
          ('dp8', {'data': -1, 'fsdp': 1}, None),
          ('dp2fsdp4', {'data': 2, 'fsdp': 4}, None))
sharded_leaves = 0
for sname, (stage, bs) in STAGES.items():
  out = {}
  for name, mesh_cfg, devs in MESHES:
    mesh = parallel.make_mesh(mesh_cfg, devs)
    stream = env.stream(ds, bs, 0)
    state, sh = train.build_state(stage, jax.random.PRNGKey(0), stream, mesh)
    if name == 'dp2fsdp4':
      sharded_leaves += sum(s.spec != jax.sharding.PartitionSpec()
                            for s in jax.tree.leaves(sh))
    step = jax.jit(stage.step, in_shardings=(sh, parallel.batch_sharding(mesh),
                   parallel.replicated(mesh)), out_shardings=(sh, parallel.replicated(mesh)))
    key = np.asarray(jax.random.PRNGKey(5))
    losses = []
    for i in range(20):
      state, m = step(state, stream.global_batch_at(i, parallel.batch_sharding(mesh)), key)
      losses.append(float(m['loss']))
    out[name] = (np.array(losses), jax.tree.leaves(jax.device_get(stage.strip(state))))
  for name in ('dp8', 'dp2fsdp4'):
    np.testing.assert_allclose(out[name][0], out['one'][0], rtol=1e-5,
                               atol=1e-6, err_msg=f'{sname} {name} losses')
    for a, b in zip(out[name][1], out['one'][1]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                 err_msg=f'{sname} {name} params')
  print('STAGE_OK', sname, out['one'][0][:2])
assert sharded_leaves > 20, sharded_leaves   # FSDP really shards
print('MESH_OK')
'''


def test_every_step_is_the_same_on_1_and_8_devices_and_fsdp(repo_root):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=repo_root,
                     env=env, capture_output=True, text=True, timeout=600)
  assert 'MESH_OK' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
