"""Runs a plan (plan.py): opens, binds and trains or restores each job in
order, hands what each publishes to later jobs, and evaluates.

It names no method: everything it knows about one comes through the
registry and the interface of plugins/base.py. A finished job (its
stage.json records the final step) is skipped on a re-run, an unfinished
one resumes from its latest checkpoint, and a provider's trained state is
restored only when a later job first needs what it publishes.
"""
from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

from mmd_jax.data import load_dataset
from mmd_jax.device import parallel
from mmd_jax.evaluation import cycle, evaluate
from mmd_jax.loop import train
from mmd_jax.plugins.base import SPACE
from mmd_jax.run import config_check, scoring
from mmd_jax.run import plan as plan_lib
from mmd_jax.run.artifacts import Artifacts
from mmd_jax.run.checks import ConfigError
from mmd_jax.run.env import Env, stage_key
from mmd_jax.run.jobs import (abstract_state, bind, loop_of, needs_of,
                              open_job, release_frozen, restore, stream_of)
from mmd_jax.workdir import fs, stage_meta, workdir_lock
from mmd_jax.workdir.stage_meta import WorkdirError

__all__ = ['Env', 'WorkdirError', 'run', 'evaluate_workdir', 'stage_key']


class Run:
  """One run of a plan: the environment, the artifacts and the opened
  jobs, by name."""

  def __init__(self, config, workdir: str, data, plan, abstract=False):
    """`abstract` (describe, bench): nothing is read or trained; the
    space and every artifact are shapes."""
    self.plan, self.artifacts, self.opened = plan, Artifacts(), {}
    self.abstract = abstract
    space_of = self.artifacts.shape if abstract else self.artifacts.get
    self.env = Env(config, workdir, parallel.make_mesh(config.mesh), data,
                   plan, space_of=lambda: space_of(SPACE))
    self.declared = {n for p in plan.jobs for n in needs_of(p)}
    self._config_saved = False

  def save_configs(self, opened):
    """W/config.json (once per run) and the job's own config.json: written
    once the job has shown it can go on (restored, skipped or imported),
    so a run that stops on a damaged stage leaves both as they were."""
    self.save_run_config()
    stage_meta.save_config(self.env.config, opened.stage_dir)

  def save_run_config(self):
    if not self._config_saved:
      prepare_workdir(self.env.config, self.env.workdir)
      self._config_saved = True

  def open(self, planned):
    """The opened job, opened on first call."""
    name = planned.job.name
    if name not in self.opened:
      self.opened[name] = open_job(self.env, planned, read=not self.abstract)
    return self.opened[name]

  def bind_abstract(self, opened):
    """Binds a job that is only restored: its needs as shapes."""
    return bind(opened, {a: self.artifacts.shape(a)
                         for a in needs_of(opened.planned)})

  def offer(self, opened, state=None):
    """Offers what the job publishes: from `state`, or restored on first
    use; shapes from the abstract state."""
    b = opened.bound
    if b.publish is None:
      return
    self.artifacts.offer(
        opened.job.name, opened.method.provides,
        lambda: b.publish(state if state is not None else restore(
            self.env, opened)),
        lambda: b.publish(abstract_state(self.env, opened)))


def prepare_workdir(config, workdir: str):
  """Writes W/config.json; the one-line error on unwritable storage."""
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


def _quality(r: Run, opened, scorer: list):
  """Scores the job every eval.every_steps steps on eval.num_samples
  samples (the paper's FID-50k every 5k steps): students and generators."""
  env, e = r.env, r.env.config.eval
  sampling, ctx = opened.bound.sampling, opened.ctx
  if not e.every_steps or sampling is None or sampling.steps is None:
    return None

  def quality(state):
    if not scorer:
      scorer.append(evaluate.Scorer(env.config, env.data, env.workdir))
    bad = []
    samples, labels = evaluate.generate(
        sampling.draw, state.sampling_params, jax.random.PRNGKey(e.seed),
        e.num_samples, sampling.steps, 'ancestral', e.batch_size,
        ctx.dataset.example_shape, cycle.of(ctx.spec, ctx.dataset),
        decode=ctx.space.decode, quantize=env.data.kind == 'images',
        nonfinite=bad)
    return scorer[0].score(samples, labels, sum(bad))
  return quality


def _import(r: Run, opened):
  """A job whose source is a file becomes its directory in the workdir: a
  checkpoint at the final step (once; a later run reads it). Returns the
  imported state, or None when an earlier run imported it."""
  job, old = opened.job, opened.stored
  if old is not None:
    if old.get('imported_from') == job.source and opened.finished:
      r.bind_abstract(opened)
      return None
    raise ConfigError(
        f'config.{job.source_key}: {opened.stage_dir} already holds a '
        f"{job.model} ({old.get('imported_from') or 'trained here'}); use a "
        'new workdir to import one')
  b = bind(opened, {a: r.artifacts.get(a) for a in needs_of(opened.planned)})
  loop = loop_of(r.env, opened)
  state, _ = train.build_state(loop, stage_key(r.env.config.seed, job.name),
                               stream_of(r.env, opened), r.env.mesh)
  state = b.load(state)
  opened.stored = dict(opened.record, imported_from=job.source,
                       finished_step=job.num_steps)
  train.save_finished(loop, state, dict(opened.record,
                                        imported_from=job.source))
  r.save_configs(opened)
  return state


def _train(r: Run, opened, scorer):
  """Trains one job (or skips it when finished); returns its state, or
  None when it was skipped."""
  if opened.finished:
    r.save_configs(opened)
    logging.info('%s: finished earlier, skipping', opened.job.name)
    r.bind_abstract(opened)
    return None
  bind(opened, {a: r.artifacts.get(a) for a in needs_of(opened.planned)})
  loop = dataclasses.replace(loop_of(r.env, opened, _quality(r, opened,
                                                             scorer)),
                             on_start=lambda: r.save_configs(opened))
  stream = stream_of(r.env, opened)
  _log_data_shard(stream)
  c = r.env.config
  state, opened.stored = train.run(
      loop, stream, r.env.mesh, stage_key(c.seed, opened.job.name),
      c.checkpoint, c.log, c.max_nonfinite_steps)
  release_frozen(opened)
  return state


def _preflight(r: Run):
  """What can be checked before the workdir is written: batch sizes on the
  mesh, and every job whose context does not wait for a published space
  (opened now: its directory's setting and an imported one's data)."""
  for planned in r.plan.jobs:
    job = planned.job
    parallel.check_batch(job.batch_size, r.env.mesh, job.batch_key,
                         job.micro_batches)
    if not (r.plan.latent and planned.method.in_space):
      r.open(planned)
    if not planned.train and not job.source and not fs.isdir(
        r.env.stage_dir(job)):
      raise WorkdirError(
          f'{r.env.stage_dir(job)} does not exist: a later stage needs its '
          f"{' and '.join(planned.method.provides)}; add {job.method!r} to "
          'config.stages or import one')


def run(config, workdir: str):
  plan = config_check.validate(config)
  fs.check_reachable(workdir)
  r = Run(config, workdir, load_dataset(config.data), plan)
  _preflight(r)
  with workdir_lock.holding(workdir):
    _run_plan(r)


def _run_plan(r: Run):
  data = r.env.data
  logging.info('dataset %s: %d training examples of shape %s', data.name,
               data.num_train, data.example_shape)
  scorer = []
  items = r.plan.items
  for i, item in enumerate(items):
    if item is plan_lib.EVALUATE:
      r.save_run_config()
      scoring.evaluate(r, items[:i])
      continue
    opened = r.open(item)
    state = None
    if item.train:
      state = _train(r, opened, scorer)
    elif item.job.source and not item.job.stage_dir:
      state = _import(r, opened)
    else:
      r.bind_abstract(opened)
    r.offer(opened, state)
    r.artifacts.release_unneeded(r.declared, {
        n for later in items[i + 1:] if later is not plan_lib.EVALUATE
        and later.train for n in needs_of(later)})


def evaluate_workdir(config, workdir: str, checkpoint_step: int | None = None):
  """--mode=eval: scores the checkpoints (the latest, or `checkpoint_step`)
  of every job of the plan that `workdir` holds; trains nothing, rewrites
  the report."""
  plan = config_check.validate(config)
  fs.check_reachable(workdir)
  if not fs.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} does not exist')
  r = Run(config, workdir, load_dataset(config.data), plan)
  missing = [p.job.name for p in plan.jobs
             if not p.job.source and not fs.isdir(r.env.stage_dir(p.job))]
  if missing:
    raise WorkdirError(f'{workdir} has no stage {missing[0]!r} (config.stages '
                       f'names it); train it first or drop it from the stages')
  with workdir_lock.holding(workdir):
    for planned in plan.jobs:
      opened = r.open(planned)
      r.bind_abstract(opened)
      r.offer(opened)
    return scoring.evaluate(r, plan.jobs, checkpoint_step)
