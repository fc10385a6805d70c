"""Teacher step mechanics and checkpoint/resume (mesh equivalence: test_mesh_equivalence.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from configs import toy2d
from mmd_jax.run import config_check, jobs, runner
from mmd_jax.device import parallel
from mmd_jax.loop import train
from mmd_jax.data import load_dataset
from mmd_jax.methods import teacher


def _setup(tmp_path, steps=20):
  cfg = toy2d.get_config('tiny')
  cfg.teacher.num_train_steps = steps
  cfg.checkpoint.every_steps = 10
  cfg.stages = ('teacher',)
  ds = load_dataset(cfg.data)
  return cfg, ds, None


def _env_step(cfg, ds, workdir):
  plan = config_check.validate(cfg)
  env = runner.Env(cfg, str(workdir), parallel.make_mesh(cfg.mesh), ds)
  return env, plan, plan.jobs[0]


def _train(cfg, ds, spec, workdir):
  del spec
  env, _, step = _env_step(cfg, ds, workdir)
  loop = jobs.bound_loop(env, step, {})
  stream = env.stream(ds, cfg.teacher.batch_size, 0)
  return train.run(loop, stream, env.mesh, jax.random.PRNGKey(0),
                   cfg.checkpoint, cfg.log)[0]


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
  spec = state.spec
  # Jitted: eager dispatch compiles each small op of init and the loss.
  init = jax.jit(lambda k: teacher.init(k, spec, state.hparams, state.tx,
                                        {'x': x}))(jax.random.PRNGKey(0))
  fixed_loss = jax.jit(lambda p: teacher.diffusion_loss(
      spec, p, x, None, key, 'v', train=False))

  def loss(p):
    return float(fixed_loss(p))
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
  # The restored checkpoint is what the runner's restore sees.
  env, plan, step = _env_step(cfg, ds, tmp_path / 'b')
  opened = jobs.open_job(env, step)
  jobs.bind(opened, {})
  loaded = jobs.restore(env, opened)
  for a, b in zip(jax.tree.leaves(loaded.ema_params),
                  jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
