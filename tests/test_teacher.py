"""Teacher step mechanics, checkpoint/resume, and mesh equivalence."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import toy2d
from mmd_jax import parallel, pipeline, train
from mmd_jax.data import load_dataset
from mmd_jax.methods import teacher


def _setup(tmp_path, steps=20):
  cfg = toy2d.get_config('tiny')
  cfg.teacher.num_train_steps = steps
  cfg.checkpoint.every_steps = 10
  ds = load_dataset(cfg.data)
  spec = pipeline.denoiser_spec(cfg, ds)
  return cfg, ds, spec


def _train(cfg, ds, spec, workdir):
  mesh = parallel.make_mesh(cfg.mesh)
  stage = pipeline.teacher_stage(cfg, str(workdir), ds, spec)
  stream = pipeline.stream_for(cfg, ds, cfg.teacher.batch_size, 0)
  return train.run(stage, stream, mesh, jax.random.PRNGKey(0), cfg.checkpoint,
                   cfg.log)


def test_loss_decreases_and_teacher_keeps_adam_state(tmp_path):
  cfg, ds, spec = _setup(tmp_path, steps=300)
  cfg.teacher.warmup_steps = 20
  cfg.teacher.learning_rate = 3e-3
  cfg.log.every_steps = 50
  state = _train(cfg, ds, spec, tmp_path / 'w')
  recs = [json.loads(l) for l in open(tmp_path / 'w' / 'teacher' / 'metrics.jsonl')]
  assert recs[0]['step'] == 50 and 'loss' in recs[0]
  # The logged loss is one small batch; compare a fixed large-batch loss.
  x = jnp.asarray(ds.train['x'][:4096])
  key = jax.random.PRNGKey(42)
  init = teacher.init(jax.random.PRNGKey(0), spec, state.hparams, state.tx,
                      {'x': x})

  def loss(p):
    return float(teacher.diffusion_loss(spec, p, x, None, key, 'v', 0.5,
                                        train=False))
  print('fixed-batch loss', loss(init.params), loss(state.params))
  assert loss(state.params) < 0.85 * loss(init.params)
  nu, count = teacher.adam_second_moment(state.opt_state)
  assert int(count) == 300
  assert jax.tree.structure(nu) == jax.tree.structure(state.params)
  assert all(float(jnp.min(v)) >= 0 for v in jax.tree.leaves(nu))


def test_checkpoint_resume_continues_the_same_trajectory(tmp_path):
  cfg, ds, spec = _setup(tmp_path, steps=20)
  straight = _train(cfg, ds, spec, tmp_path / 'a')
  cfg.teacher.num_train_steps = 10  # "interrupted" after its step-10 save
  _train(cfg, ds, spec, tmp_path / 'b')
  cfg.teacher.num_train_steps = 20
  resumed = _train(cfg, ds, spec, tmp_path / 'b')  # restores step 10
  assert int(resumed.step) == 20
  for a, b in zip(jax.tree.leaves(straight.params),
                  jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(straight.opt_state),
                  jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The restored checkpoint is what load_teacher sees.
  loaded = pipeline.load_teacher(cfg, str(tmp_path / 'b'), ds, spec,
                                 parallel.make_mesh(cfg.mesh))
  for a, b in zip(jax.tree.leaves(loaded.ema_params),
                  jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_MESH_SCRIPT = r'''
import jax, numpy as np
from configs import toy2d
from mmd_jax import parallel, pipeline, train
from mmd_jax.data import load_dataset
from mmd_jax.methods import teacher
assert jax.device_count() == 8
cfg = toy2d.get_config('tiny')
ds = load_dataset(cfg.data)
spec = pipeline.denoiser_spec(cfg, ds)
stage = pipeline.teacher_stage(cfg, '/tmp/unused', ds, spec)
out = {}
for name, mesh_cfg, devs in (('one', {'data': 1, 'fsdp': 1}, jax.devices()[:1]),
                             ('dp8', {'data': -1, 'fsdp': 1}, None),
                             ('dp2fsdp4', {'data': 2, 'fsdp': 4}, None)):
  mesh = parallel.make_mesh(mesh_cfg, devs)
  stream = pipeline.stream_for(cfg, ds, cfg.teacher.batch_size, 0)
  state, sh = train.build_state(stage, jax.random.PRNGKey(0), stream, mesh)
  step = jax.jit(teacher.step, in_shardings=(sh, parallel.batch_sharding(mesh),
                 parallel.replicated(mesh)), out_shardings=(sh, parallel.replicated(mesh)))
  key = np.asarray(state.rng)
  losses = []
  for i in range(20):
    state, m = step(state, stream.global_batch_at(i, parallel.batch_sharding(mesh)), key)
    losses.append(float(m['loss']))
  out[name] = (np.array(losses), jax.tree.leaves(jax.device_get(state.params)))
for name in ('dp8', 'dp2fsdp4'):
  np.testing.assert_allclose(out[name][0], out['one'][0], rtol=1e-5)
  for a, b in zip(out[name][1], out['one'][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print('MESH_OK', out['one'][0][:3])
'''


def test_teacher_step_is_the_same_on_1_and_8_devices(repo_root):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', _MESH_SCRIPT], cwd=repo_root,
                     env=env, capture_output=True, text=True, timeout=300)
  assert 'MESH_OK' in r.stdout, r.stderr[-3000:]
