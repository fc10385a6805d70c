"""Every registered method through the interface the runner uses: jobs ->
bind -> a jitted, guarded step -> the restore shapes -> what it publishes
-> sampling -> an evaluation row. A method is covered here the moment it is registered; a
deliberately broken one fails."""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from mmd_jax.blocks import guard
from mmd_jax.device import parallel
from mmd_jax.run import jobs, plan, runner
from mmd_jax.run.artifacts import placeholders
from mmd_jax.loop import train
from mmd_jax import plugins as registry
from mmd_jax.data import data_shape, load_dataset
from mmd_jax.evaluation import cycle, evaluate
from mmd_jax.plugins import base

# toy2d:tiny, with a small VAE and few IWAE samples for the VAE's row.
OVERRIDES = {'vae.hidden': 16, 'vae.batch_size': 64, 'vae.iwae_samples': 10,
             'eval.num_samples': 128, 'eval.batch_size': 128}


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact))


def check_method(method, config, workdir):
  """Raises AssertionError (or the method's own error) where `method` breaks
  the contract of plugins/base.py."""
  data = load_dataset(config.data)
  plan.validate_methods(config, [method.name], data_shape(config.data))
  cfg = plan.view(config, method)
  method_jobs = method.jobs(cfg)
  assert method_jobs, f'{method.name}: no jobs'
  names = [j.name for j in method_jobs]
  assert len(set(names)) == len(names), f'{method.name}: repeated {names}'
  for j in method_jobs:
    assert j.method == method.name and j.num_steps >= 1 and j.batch_size >= 1
  for a in method.needs:
    assert registry.provider_of(a) is not None, f'nobody publishes {a!r}'

  env = runner.Env(config, str(workdir), parallel.make_mesh(config.mesh),
                   data)
  # The providers' shapes, as describe and bench get them, and stand-ins.
  _, shapes = jobs.abstract_jobs(env, config, [method])
  job = method_jobs[0]
  planned = plan.PlannedJob(method, cfg, job, train=True)
  needs = jobs.needs_of(planned)
  opened = jobs.open_job(env, planned, read=False)
  bound = jobs.bind(opened, placeholders({a: shapes[a] for a in needs}))
  loop = jobs.loop_of(env, opened)
  ctx = opened.ctx
  stream = env.stream(ctx.dataset, job.batch_size, job.data_salt)
  state, shardings = train.build_state(loop, jax.random.PRNGKey(0), stream,
                                       env.mesh)
  before = jax.tree.map(np.asarray, loop.strip(state))
  if hasattr(state, 'teacher_params'):   # teacher.frozen_dtype
    want = jnp.dtype(config.teacher.frozen_dtype)
    assert {x.dtype for x in jax.tree.leaves(state.teacher_params)} == {want}
    assert {x.dtype for x in jax.tree.leaves(state.sampling_params)} == {
        jnp.dtype(jnp.float32)}
  step_fn = train.jit_step(loop, shardings, env.mesh)
  counts = guard.init_counts()
  key = jax.random.PRNGKey(1)
  for i in range(3):   # step 0 may run at a warm-up rate of 0
    state, metrics, counts = step_fn(
        state, stream.global_batch_at(i, parallel.batch_sharding(env.mesh)),
        key, counts)
  assert int(counts['total']) == 0, f'{method.name}: non-finite steps'
  assert 'loss' in metrics and _finite(metrics), metrics
  assert int(state.step) == 3
  after = jax.tree.map(np.asarray, loop.strip(state))
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before), jax.tree.leaves(after))
           if np.issubdtype(a.dtype, np.floating)]
  assert any(moved), f'{method.name}: three steps changed nothing'
  # A step that goes non-finite (here: every trained value is NaN) changes
  # nothing but the step counter, and is counted.
  poisoned = jax.tree.map(
      lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x,
      loop.strip(state))
  good, state = state, poisoned.replace(**{
      f: jax.tree.map(jnp.copy, getattr(state, f))   # the step donates it
      for f in loop.frozen_fields})
  held = jax.tree_util.tree_leaves_with_path(
      jax.tree.map(np.asarray, loop.strip(state)))
  bad, _, counts = step_fn(
      state, stream.global_batch_at(3, parallel.batch_sharding(env.mesh)),
      key, counts)
  assert int(counts['total']) == 1 and int(bad.step) == 4, method.name
  for (path, a), b in zip(held, jax.tree.leaves(loop.strip(bad))):
    if jax.tree_util.keystr(path) != '.step':
      np.testing.assert_array_equal(a, b, err_msg=f'{method.name} {path}')
  state = good

  # Restoring and describing build the state from abstract artifacts: the
  # providers' shapes must be what their stand-ins are.
  abstract_bound = method.bind(job, cfg, ctx, {a: shapes[a] for a in needs})
  batch0 = stream.global_batch_at(0, parallel.batch_sharding(env.mesh))
  abstract = jax.eval_shape(abstract_bound.init, jax.random.PRNGKey(0),
                            batch0, abstract_bound.frozen)
  assert [(s.shape, s.dtype) for s in jax.tree.leaves(abstract)] == [
      (x.shape, x.dtype) for x in jax.tree.leaves(state)], (
          f'{method.name}: the abstract state differs from the real one')

  if bound.publish is not None:
    published = bound.publish(state)
    for a, value in published.items():
      assert a in method.provides or a.startswith(f'{job.name}/'), (
          f'{method.name} publishes undeclared {a!r}')
      assert value is not None
    assert set(method.provides) <= set(published)
    # The shapes describe and bench use are the published values' shapes.
    published_shapes = abstract_bound.publish(abstract)
    assert set(published_shapes) == set(published)
    for a in published:
      got = [(getattr(x, 'shape', None), getattr(x, 'dtype', None))
             for x in jax.tree.leaves(published_shapes[a])]
      want = [(getattr(x, 'shape', None), getattr(x, 'dtype', None))
              for x in jax.tree.leaves(published[a])]
      assert got == want, f'{method.name}: shapes of {a!r} differ'
  else:
    assert not method.provides, f'{method.name} publishes nothing'

  rows = bound.report(state, 0)[0] if bound.report else []
  sampling = bound.sampling
  assert rows or sampling is not None, f'{method.name}: nothing to report'
  for r in rows:
    assert {'model', 'sampler', 'steps', 'metrics'} <= set(r), r
    assert r['metrics'] and _finite(r['metrics']), r
  if sampling is not None:
    assert sampling.steps is None or sampling.steps >= 1
    steps = sampling.steps or 2
    n = config.eval.num_samples
    samples, labels = evaluate.generate(
        sampling.draw, state.sampling_params, jax.random.PRNGKey(2), n, steps,
        'ancestral', n, ctx.dataset.example_shape,
        cycle.of(ctx.spec, ctx.dataset), decode=ctx.space.decode)
    assert samples.shape == (n,) + tuple(data.example_shape), samples.shape
    assert _finite(samples)
    row = evaluate.Scorer(config, data, str(workdir)).score(samples, labels)
    assert row and _finite(row), row


@pytest.mark.parametrize('name', registry.names())
def test_every_registered_method_keeps_the_contract(name, tmp_path):
  """On caption-conditioned data (toy2d_text): every method trains and
  samples with captions; the unconditional path is the bfloat16 test's
  and every pipeline test's."""
  config = tiny.config('toy2d_text', 'tiny', OVERRIDES)
  check_method(registry.get(name), config, tmp_path)
  if registry.get(name).sections != ('vae',):
    spec = plan_spec(config)
    assert spec.captions is not None and spec.has_null, name


@pytest.mark.parametrize('name', ['mm_parameter', 'emd'])
def test_a_bfloat16_frozen_teacher_trains_the_same_way(name, tmp_path):
  """The cast is the runner's, the same for every method holding a frozen
  teacher; two of them, one with a second frozen input (precond)."""
  check_method(registry.get(name), tiny.config(
      'toy2d', 'tiny', dict(OVERRIDES, **{'teacher.frozen_dtype':
                                          'bfloat16'})), tmp_path)


def plan_spec(config):
  from mmd_jax.numerics.denoiser import spec_from_config
  return spec_from_config(config, load_dataset(config.data))


def test_every_method_declares_sections_the_default_config_has():
  from configs import default
  c = default.get_base_config()
  for m in registry.methods():
    for s in m.sections:
      assert s in c, f'{m.name} reads config.{s}, which default.py lacks'
    assert m.name not in ('evaluate',), 'evaluate is the runner\'s stage'


@flax.struct.dataclass
class _DummyState:
  step: jax.Array
  rng: jax.Array
  teacher_params: dict
  student: dict

  @property
  def sampling_params(self):
    return self.student


class _Broken(base.Method):
  """A method whose step returns a non-finite loss."""
  name = 'broken_dummy'
  sections = ('distill',)
  needs = ('teacher_params', 'teacher_frozen_dtype')
  networks = ('student',)

  def jobs(self, cfg):
    d = cfg.distill
    return [base.Job(self.name, f'{self.name}_k1', self.name, 1,
                     d.num_train_steps, d.batch_size, 'distill.batch_size')]

  def bind(self, job, cfg, ctx, artifacts):
    def init(key, batch, frozen):
      t = frozen['teacher_params']
      return _DummyState(jnp.zeros((), jnp.int32), key,
                         jax.tree.map(jnp.copy, t), jax.tree.map(jnp.copy, t))

    def step(state, batch, key):
      return state.replace(step=state.step + 1), {'loss': jnp.full((), jnp.nan)}
    return base.Bound(init, step,
                      {'teacher_params': artifacts['teacher_params']},
                      sampling=base.Sampling(base.SpecSampler(ctx.spec),
                                             steps=1))


class _ReadsTeacherSection(_Broken):
  """Reads a key outside its sections."""
  name = 'nosy_dummy'

  def jobs(self, cfg):
    assert cfg.teacher.batch_size > 0   # not one of its sections
    return super().jobs(cfg)


@pytest.mark.parametrize('method,error', [
    (_Broken(), AssertionError),
    (_ReadsTeacherSection(), plan.SectionError),
])
def test_a_broken_method_fails_the_contract(method, error, tmp_path):
  registry.register(method)
  try:
    assert method.name in registry.names()
    with pytest.raises(error):
      check_method(method, tiny.config('toy2d', 'tiny', OVERRIDES), tmp_path)
  finally:
    registry.unregister(method.name)
  assert method.name not in registry.names()


def test_a_method_sees_only_its_sections_and_the_run_keys():
  c = tiny.config('toy2d', 'tiny')
  v = plan.view(c, registry.get('mm_alternating'))
  assert v.distill.batch_size == c.distill.batch_size
  assert v.seed == c.seed and v.grad_accum_steps == c.grad_accum_steps
  for other in ('teacher', 'emd', 'vae', 'eval', 'model', 'data'):
    with pytest.raises(plan.SectionError, match=f'config.{other}'):
      getattr(v, other)
    with pytest.raises(plan.SectionError):
      v[other]
