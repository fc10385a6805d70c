"""Runs a plan (plan.py): trains or restores each job in order, hands the
artifacts each publishes to later jobs, and evaluates.

It names no method: everything it knows about one comes through the
registry and the interface of stages/base.py. A finished job (its
stage.json records the final step) is skipped on a re-run, an unfinished
one resumes from its latest checkpoint, and a provider's trained state is
restored only when a later job first needs what it publishes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmd_jax.workdir import fs
from mmd_jax.run import config_check, costs, plan as plan_lib
from mmd_jax.device import parallel
from mmd_jax.workdir import stage_meta
from mmd_jax.loop import train
from mmd_jax.workdir import workdir_lock
from mmd_jax import plugins as registry
from mmd_jax.run.checks import ConfigError, need
from mmd_jax.data import batches, load_dataset
from mmd_jax.numerics.denoiser import spec_from_config
from mmd_jax.evaluation import evaluate, plots
from mmd_jax.numerics.space import IDENTITY
from mmd_jax.plugins.base import Context

# Sampling steps of the preview picture of a many-step model.
PREVIEW_STEPS = 64


# The runner's one-line error, raised here and in stage_meta.
WorkdirError = stage_meta.WorkdirError


def stage_key(seed: int, name: str):
  """A stage's base key: the seed and the directory name only, so a stage
  draws the same numbers whatever ran before it (crc32: distinct for
  anagram names, unlike a sum of character codes)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed),
                            np.uint32(zlib.crc32(name.encode())))


class Env:
  """The run around the methods: config, workdir, mesh, the data, the
  network (config.model's, or one a planned method brings), and the space
  the diffusion models live in (identity until a published space replaces
  it)."""

  def __init__(self, config, workdir: str, mesh, data, plan=None):
    self.config, self.workdir, self.mesh, self.data = (config, workdir, mesh,
                                                       data)
    self.network = network_of(plan, data, workdir) if plan else None
    # Before any training: evaluation would only meet it at the end.
    need(not (self.network and not self.network.null_label and
              config.eval.guidance), 'eval.guidance',
         'this teacher has no null label (its class embedding covers only '
         'the data\'s classes), so classifier-free guidance cannot run; set '
         'it to 0')
    self.set_space(IDENTITY)

  def set_space(self, space):
    self.space = space
    self.dataset = space.encode_dataset(self.data)
    self.spec = spec_from_config(self.config, self.dataset, self.network)

  def stream(self, dataset, batch_size: int, salt: int):
    images = dataset.kind == 'images'
    return batches.BatchStream(
        dataset.train, batch_size, self.config.seed + salt,
        jax.process_index(), jax.process_count(),
        random_flip=images and self.config.data.random_flip, prefetch=images)

  def context(self, method) -> Context:
    if method.in_space:
      dataset, spec = self.dataset, self.spec
    else:
      dataset, spec = self.data, spec_from_config(self.config, self.data)
    return Context(self.workdir, self.mesh, self.data, dataset, spec,
                   self.space, self.stream)

  def stage_dir(self, job) -> str:
    return job.stage_dir or os.path.join(self.workdir, job.name)


def network_of(plan, data, workdir: str):
  """The network a planned method brings (an imported teacher), if any."""
  found = [n for n in (s.method.network(s.cfg, data, workdir)
                       for s in plan.steps) if n is not None]
  return found[0] if found else None


# ----------------------------------------------------------------------------
# Stages: build, restore.


def _preview(env, step, ctx):
  """The picture a stage leaves in its directory: the method's own, or
  samples drawn as evaluation draws them (a many-step model at no more than
  PREVIEW_STEPS of eval.teacher_steps)."""
  custom = step.method.preview(step.job, step.cfg, ctx)
  sampling = step.method.sampling(step.job, step.cfg, ctx)
  if custom is not None or sampling is None:
    return custom
  ks = env.config.eval.teacher_steps  # may be (): one-step models only
  k = sampling.steps or min(PREVIEW_STEPS, max(ks, default=PREVIEW_STEPS))

  def preview(state, path):
    n = env.config.log.num_preview_samples
    x, _ = evaluate.generate(
        sampling.draw, state.sampling_params, jax.random.PRNGKey(0), n, k,
        'ancestral', n, ctx.dataset.example_shape, ctx.spec.num_classes,
        decode=ctx.space.decode)
    real = env.data.train['x'][:2000] if env.data.kind == 'points' else None
    plots.save_samples(x, path,
                       f'{step.job.name}, {k} steps, step {int(state.step)}',
                       real=real)
  return preview


def _frozen_teacher_in(init, dtype: str):
  """`init`, whose state's frozen `teacher_params` (if it has them) are
  stored in `dtype` (config.teacher.frozen_dtype). The trained networks
  were copied from the teacher before this cast, so they stay float32."""
  if dtype == 'float32':
    return init

  def cast(key, batch, frozen):
    state = init(key, batch, frozen)
    if not hasattr(state, 'teacher_params'):
      return state
    return state.replace(teacher_params=jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
        else x, state.teacher_params))
  return cast


def build_stage(env, step, artifacts: dict, ctx=None) -> train.Stage:
  """The loop's Stage for a planned job, with `artifacts` (concrete to
  train, abstract to restore or describe)."""
  ctx = ctx or env.context(step.method)
  b = step.method.build(step.job, step.cfg, ctx, artifacts)
  frozen = b.frozen or None
  return train.Stage(
      name=step.job.name, stage_dir=env.stage_dir(step.job),
      num_steps=step.job.num_steps,
      init=_frozen_teacher_in(b.init, env.config.teacher.frozen_dtype),
      step=b.step,
      rng=lambda s: s.rng, meta=stage_meta.build(step, ctx),
      preview=_preview(env, step, ctx), frozen=frozen,
      frozen_fields=tuple(frozen or ()),
      matmul_precision=env.config.matmul_precision)


def abstract_artifacts(env, plan, method) -> dict:
  """The shapes of what `method` needs, from its providers: enough to
  restore or describe it without training or reading them."""
  out = {}
  for a in method.needs:
    p = registry.provider_of(a)
    out[a] = p.artifact_shapes(plan.view_of(p), env.context(p))[a]
  return out


def restore(env, plan, step, checkpoint_step=None):
  """The one restore path: a job's latest (or given) checkpoint, with its
  frozen inputs left out (None)."""
  ctx = env.context(step.method)
  if step.job.stage_dir and step.job.source_key:
    stage_meta.check_source(step, ctx)
  else:
    stage_meta.check_same(env.stage_dir(step.job), stage_meta.build(step, ctx))
  stage = build_stage(env, step, abstract_artifacts(env, plan, step.method),
                      ctx)
  stream = env.stream(ctx.dataset, step.job.batch_size, step.job.data_salt)
  return train.restore_latest(stage, stream, env.mesh,
                              stage_key(env.config.seed, step.job.name),
                              checkpoint_step)


class Artifacts:
  """What jobs publish, by name. A provider's state is restored only when
  a consumer first asks for one of its artifacts."""

  def __init__(self):
    self._values, self._pending = {}, {}

  def offer(self, names, thunk):
    for n in names:
      self._values.pop(n, None)
      self._pending[n] = thunk

  def get(self, name):
    if name not in self._values:
      thunk = self._pending.get(name)
      if thunk is None:
        raise KeyError(f'no job of this run publishes {name!r}')
      published = thunk()
      for n, v in published.items():
        if self._pending.get(n) is thunk:
          self._values[n] = v
          del self._pending[n]
    return self._values[name]


def _offer(env, plan, arts, step, state=None):
  m = step.method
  if not m.provides:
    return

  def publish():
    s = state if state is not None else restore(env, plan, step)
    return m.publish(step.job, step.cfg, env.context(m), s)
  arts.offer(m.provides, publish)
  if plan.latent and 'space' in m.provides:
    env.set_space(arts.get('space'))


# ----------------------------------------------------------------------------
# Training.


def prepare_workdir(config, workdir: str):
  try:
    fs.makedirs(workdir)
    if jax.process_index() == 0:
      fs.write_text(os.path.join(workdir, 'config.json'),
                    config.to_json_best_effort(indent=2))
  except OSError as e:
    raise WorkdirError(f'workdir {workdir} is not writable ({e.strerror or e})'
                       ) from None


def _log_data_shard(stream):
  if jax.process_count() > 1:
    idx = stream.local_indices(0)
    logging.info('data: process %d of %d reads %d of the %d examples of each '
                 'global batch; step 0 rows %s', jax.process_index(),
                 jax.process_count(), len(idx), stream.global_batch,
                 ','.join(map(str, idx[:8])))


def _with_quality(env, step, ctx, stage, scorer: list):
  """The stage, scored every eval.every_steps steps on eval.num_samples
  samples (the paper's FID-50k every 5k steps): students and generators."""
  e = env.config.eval
  sampling = step.method.sampling(step.job, step.cfg, ctx)
  if not e.every_steps or sampling is None or sampling.steps is None:
    return stage

  def quality(state):
    if not scorer:
      scorer.append(evaluate.Scorer(env.config, env.data, env.workdir))
    samples, labels = evaluate.generate(
        sampling.draw, state.sampling_params, jax.random.PRNGKey(e.seed),
        e.num_samples, sampling.steps, 'ancestral', e.batch_size,
        ctx.dataset.example_shape, ctx.spec.num_classes,
        decode=ctx.space.decode, quantize=env.data.kind == 'images')
    return scorer[0].score(samples, labels)

  return dataclasses.replace(stage, quality=quality,
                             quality_every=e.every_steps)


def _import(env, plan, step, ctx):
  """A job whose source is a file becomes its directory in the workdir: a
  checkpoint at the final step (once; a later run reads it)."""
  stage_dir = env.stage_dir(step.job)
  job = step.job
  old = stage_meta.read(stage_dir)
  if old is not None:
    if old.get('imported_from') == job.source and train.is_finished(
        stage_dir, job.num_steps):
      return
    raise ConfigError(
        f'config.{job.source_key}: {stage_dir} already holds a {job.model} '
        f"({old.get('imported_from') or 'trained here'}); use a new workdir "
        'to import one')
  stage = build_stage(env, step, {a: None for a in step.method.needs}, ctx)
  stream = env.stream(ctx.dataset, job.batch_size, job.data_salt)
  state, _ = train.build_state(stage, stage_key(env.config.seed, job.name),
                               stream, env.mesh)
  state = step.method.import_state(job, step.cfg, ctx, state)
  train.save_finished(stage, state, dict(stage.meta, imported_from=job.source))
  stage_meta.save_config(env.config, stage_dir)


def _parent_artifacts(env, plan, step, states) -> dict:
  """{'parent_params': ...} of a job that starts from an earlier one: the
  state trained in this run (released once used: a round's state is a
  whole model), else the parent's checkpoint."""
  name = step.job.parent
  if not name:
    return {}
  state = states.pop(name, None)
  if state is None:
    parent = next(s for s in plan.steps if s.job.name == name)
    state = restore(env, plan, parent)
  return {'parent_params': state.sampling_params}


def _train(env, plan, arts, step, scorer, states=None):
  """Trains one job (or skips it when finished); returns its state, or
  None when it was skipped."""
  ctx = env.context(step.method)
  job = step.job
  stage_dir = env.stage_dir(job)
  stage_meta.check_same(stage_dir, stage_meta.build(step, ctx))
  stage_meta.save_config(env.config, stage_dir)
  if train.is_finished(stage_dir, job.num_steps):
    logging.info('%s: finished earlier, skipping', job.name)
    return None
  artifacts = {a: arts.get(a) for a in step.method.needs}
  artifacts.update(_parent_artifacts(env, plan, step, states or {}))
  stage = build_stage(env, step, artifacts, ctx)
  stage = _with_quality(env, step, ctx, stage, scorer)
  stream = env.stream(ctx.dataset, job.batch_size, job.data_salt)
  _log_data_shard(stream)
  c = env.config
  return train.run(stage, stream, env.mesh, stage_key(c.seed, job.name),
                   c.checkpoint, c.log, c.max_nonfinite_steps)


def _preflight(env, plan):
  """What can be checked before the workdir is written: batch sizes on the
  mesh, and imported directories (in data space: a latent run's are
  checked when its space exists)."""
  for step in plan.steps:
    job = step.job
    parallel.check_batch(job.batch_size, env.mesh, job.batch_key,
                         job.micro_batches)
    if job.stage_dir and not (plan.latent and step.method.in_space):
      stage_meta.check_source(step, env.context(step.method))
    if not step.train and not job.source and not fs.isdir(
        env.stage_dir(job)):
      raise WorkdirError(
          f'{env.stage_dir(job)} does not exist: a later stage needs its '
          f"{' and '.join(step.method.provides)}; add {job.method!r} to "
          f'config.stages or import one')


def run(config, workdir: str):
  plan = config_check.validate(config)
  env = Env(config, workdir, parallel.make_mesh(config.mesh),
            load_dataset(config.data), plan)
  _preflight(env, plan)
  with workdir_lock.holding(workdir):
    prepare_workdir(config, workdir)
    _run_plan(env, plan)


def _run_plan(env, plan):
  logging.info('dataset %s: %d training examples of shape %s', env.data.name,
               env.data.num_train, env.data.example_shape)
  arts, scorer, states = Artifacts(), [], {}
  parents = {s.job.parent for s in plan.steps if s.job.parent}
  for i, item in enumerate(plan.items):
    if item is plan_lib.EVALUATE:
      _evaluate(env, plan, plan.items[:i])
      continue
    state = None
    if item.train:
      state = _train(env, plan, arts, item, scorer, states)
      if item.job.name in parents:
        states[item.job.name] = state
    elif item.job.source and not item.job.stage_dir:
      _import(env, plan, item, env.context(item.method))
    elif item.job.stage_dir:
      stage_meta.check_source(item, env.context(item.method))
    _offer(env, plan, arts, item, state)


# ----------------------------------------------------------------------------
# Evaluation.


def _seconds_per_step(stage_dir):
  meta = stage_meta.read(stage_dir)
  return None if meta is None else meta.get('seconds_per_step')


def _entries(env, plan, step, ctx, sampling, params) -> list:
  e = env.config.eval
  job = step.job
  common = dict(model=job.model, draw=sampling.draw, params=params,
                shape=tuple(ctx.dataset.example_shape),
                num_classes=ctx.spec.num_classes, decode=ctx.space.decode)
  if sampling.steps is None:   # a many-step model: every asked-for sampler
    return [evaluate.Entry(sampler=s, steps=k, draw_sampler=s,
                           guidance=e.guidance, **common)
            for s in e.samplers for k in e.teacher_steps]
  return [evaluate.Entry(
      sampler='student', steps=sampling.steps,
      train_seconds_per_step=_seconds_per_step(env.stage_dir(job)),
      cost=costs.job_cost(job, plan.jobs_by_name,
                          lambda j: stage_meta.read(env.stage_dir(j))),
      setting=job.report_setting, **common)]


def _evaluate(env, plan, items, checkpoint_step=None):
  """Scores every job in `items` and writes the report."""
  entries, rows, images = [], [], {}
  for step in items:
    if step is plan_lib.EVALUATE:
      continue
    ctx = env.context(step.method)
    state = restore(env, plan, step, checkpoint_step)
    r, im = step.method.report(step.job, step.cfg, ctx, state,
                               env.config.eval.seed)
    rows += r
    images.update(im)
    sampling = step.method.sampling(step.job, step.cfg, ctx)
    if sampling is not None:
      entries += _entries(env, plan, step, ctx, sampling,
                          state.sampling_params)
  rep = evaluate.run(env.config, env.workdir, env.data, entries, rows, images)
  logging.info('report written to %s', os.path.join(env.workdir, 'report.md'))
  logging.info('reference (real vs real): %s', json.dumps(rep['reference']))
  for r in rep['rows']:
    logging.info('%-24s %-9s k=%-4d %s', r['model'], r['sampler'], r['steps'],
                 json.dumps({k: round(v, 5) for k, v in r['metrics'].items()}))
  return rep


def _resolve_space(env, plan):
  """A latent run's space, from its (trained) provider."""
  if not plan.latent:
    return
  provider = registry.provider_of('space')
  for step in plan.steps:
    if step.method is provider:
      state = restore(env, plan, step)
      env.set_space(provider.publish(step.job, step.cfg,
                                     env.context(provider), state)['space'])
      return


def evaluate_workdir(config, workdir: str, checkpoint_step: int | None = None):
  """--mode=eval: scores the checkpoints (the latest, or `checkpoint_step`)
  of every job of the plan that `workdir` holds; trains nothing, rewrites
  the report."""
  plan = config_check.validate(config)
  if not fs.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} does not exist')
  env = Env(config, workdir, parallel.make_mesh(config.mesh),
            load_dataset(config.data), plan)
  missing = [s.job.name for s in plan.steps
             if not s.job.source and not fs.isdir(env.stage_dir(s.job))]
  if missing:
    raise WorkdirError(f'{workdir} has no stage {missing[0]!r} (config.stages '
                       f'names it); train it first or drop it from the stages')
  try:
    with workdir_lock.holding(workdir):
      _resolve_space(env, plan)
      return _evaluate(env, plan, plan.steps, checkpoint_step)
  except FileNotFoundError as e:
    raise WorkdirError(str(e)) from None


# ----------------------------------------------------------------------------
# One stage directory (mmd_jax.sample, teacher export).


def load_config(path: str):
  """A run's config.json over today's defaults, so keys added since the run
  read their defaults."""
  import ml_collections

  from configs import default
  try:
    stored = json.loads(fs.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f'{path} is damaged ({e}); restore it from a copy, or '
                       'pass --config with the settings the run used') from None
  config = default.get_base_config()
  config.update(stored)
  return ml_collections.ConfigDict(config)


def open_stage(stage_dir: str):
  """(env, plan, step, state) of an existing stage directory, restored with
  the config it was trained with; a latent run's space comes with it."""
  stage_dir = fs.absolute(stage_dir)
  meta = stage_meta.read(stage_dir)
  cfg_path = os.path.join(stage_dir, 'config.json')
  if meta is None or not fs.exists(cfg_path):
    raise WorkdirError(f'{stage_dir} is not a stage directory (no '
                       'stage.json/config.json)')
  try:
    method = registry.get(meta.get('method', ''))
  except KeyError:
    raise WorkdirError(f'{stage_dir} holds method {meta.get("method")!r}, '
                       f'which this version does not have; known: '
                       f'{registry.names()}') from None
  config = load_config(cfg_path)
  workdir = os.path.dirname(stage_dir)
  plan = plan_lib.make_plan(config)
  cfg = plan.view_of(method)
  job = dataclasses.replace(
      method.job_for(cfg, os.path.basename(stage_dir), meta),
      stage_dir=stage_dir, source='', source_key='')
  step = plan_lib.Step(method, cfg, job, train=False)
  env = Env(config, workdir, parallel.make_mesh(config.mesh),
            load_dataset(config.data), plan)
  try:
    _resolve_space(env, plan)
    return env, plan, step, restore(env, plan, step)
  except FileNotFoundError as e:
    raise WorkdirError(str(e)) from None
