"""One planned job as the runner handles it: opened once (its context,
stage directory, the stage.json record the config asks for and the one the
directory holds, checked once), bound once (the method's `bind`), and from
the bound job the loop's `Loop`, its restore and its abstract state."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from mmd_jax.device import parallel
from mmd_jax.evaluation import cycle, evaluate, plots
from mmd_jax.loop import train
from mmd_jax.plugins.base import Bound, Context
from mmd_jax.run.env import stage_key
from mmd_jax.run.plan import PlannedJob
from mmd_jax.workdir import stage_meta

# Sampling steps of the preview picture of a many-step model.
PREVIEW_STEPS = 64


@dataclasses.dataclass
class Opened:
  """See the module docstring. `stored`: the directory's stage.json (None
  when it has none), kept current as the job trains."""
  planned: PlannedJob
  ctx: Context
  stage_dir: str
  record: dict
  stored: Optional[dict]
  bound: Optional[Bound] = None

  @property
  def job(self):
    return self.planned.job

  @property
  def method(self):
    return self.planned.method

  @property
  def finished(self) -> bool:
    return bool(self.stored) and self.stored.get(
        'finished_step') == self.job.num_steps


def open_job(env, planned: PlannedJob, read: bool = True) -> Opened:
  """Opens a job: refuses a directory that holds another setting, or an
  imported one trained on other data. `read=False` (describe, bench):
  nothing is read."""
  ctx = env.context(planned.method)
  stage_dir = env.stage_dir(planned.job)
  record = stage_meta.build(planned, ctx)
  if not read:
    return Opened(planned, ctx, stage_dir, record, None)
  stored = stage_meta.read(stage_dir)
  if planned.job.stage_dir and planned.job.source_key:
    stage_meta.check_source(planned.job, record, stored)
  else:
    stage_meta.check_same(stage_dir, record, stored)
  return Opened(planned, ctx, stage_dir, record, stored)


def bind(opened: Opened, artifacts: dict) -> Bound:
  """The job's one call into its method."""
  p = opened.planned
  opened.bound = p.method.bind(p.job, p.cfg, opened.ctx, artifacts)
  return opened.bound


def needs_of(planned: PlannedJob) -> tuple:
  return tuple(planned.method.needs) + tuple(planned.job.needs)


def abstract_batch(dataset, batch_size: int, mesh) -> dict:
  sh = parallel.batch_sharding(mesh)
  out = {'x': jax.ShapeDtypeStruct((batch_size,) + tuple(
      dataset.example_shape), jnp.float32, sharding=sh)}
  if dataset.num_classes:
    out['label'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sh)
  if dataset.caption_signature is not None:
    out['cond'] = dataset.caption_signature.abstract(batch_size, sh)
  return out


def abstract_state(env, opened: Opened):
  """The job's state as shapes (its frozen inputs may be abstract too)."""
  b = opened.bound
  batch = abstract_batch(opened.ctx.dataset, opened.job.batch_size, env.mesh)
  return jax.eval_shape(b.init, stage_key(env.config.seed, opened.job.name),
                        batch, b.frozen or None)


def release_frozen(opened: Opened):
  """Keeps only the shapes of a trained job's frozen inputs: restoring
  needs no more, and a teacher or a previous round is a whole model."""
  b = opened.bound
  if b.frozen:
    b.frozen = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
        if hasattr(x, 'shape') else x, b.frozen)


def loop_of(env, opened: Opened, quality=None) -> train.Loop:
  """What the training loop runs for the bound job."""
  b, job = opened.bound, opened.job
  frozen = b.frozen or None
  loop = train.Loop(
      name=job.name, stage_dir=opened.stage_dir, num_steps=job.num_steps,
      init=b.init, step=b.step, rng=lambda s: s.rng, meta=opened.record,
      preview=_preview(env, opened), frozen=frozen,
      frozen_fields=tuple(frozen or ()),
      matmul_precision=env.config.matmul_precision)
  if quality is not None:
    loop = dataclasses.replace(loop, quality=quality,
                               quality_every=env.config.eval.every_steps)
  return loop


def stream_of(env, opened: Opened):
  job = opened.job
  return env.stream(opened.ctx.dataset, job.batch_size, job.data_salt)


def restore(env, opened: Opened, checkpoint_step=None) -> Any:
  """The job's latest (or given) checkpoint, its frozen inputs left out
  (None)."""
  try:
    return train.restore_latest(loop_of(env, opened), stream_of(env, opened),
                                env.mesh,
                                stage_key(env.config.seed, opened.job.name),
                                checkpoint_step)
  except FileNotFoundError as e:
    if checkpoint_step is not None:   # the steps it has are in the message
      raise stage_meta.WorkdirError(str(e)) from None
    done = ' (its stage.json says it finished)' if opened.finished else ''
    raise stage_meta.WorkdirError(
        f'{e}{done}; restore its checkpoints/ from a copy, or remove '
        f'{opened.stage_dir} to train it again') from None


def _preview(env, opened: Opened):
  """The picture a job leaves in its directory: the method's own, or
  samples drawn as evaluation draws them (a many-step model at no more than
  PREVIEW_STEPS of eval.teacher_steps)."""
  b, ctx = opened.bound, opened.ctx
  if b.preview is not None or b.sampling is None:
    return b.preview
  sampling = b.sampling
  ks = env.config.eval.teacher_steps  # may be (): one-step models only
  k = sampling.steps or min(PREVIEW_STEPS, max(ks, default=PREVIEW_STEPS))

  def preview(state, path):
    n = env.config.log.num_preview_samples
    x, _ = evaluate.generate(
        sampling.draw, state.sampling_params, jax.random.PRNGKey(0), n, k,
        'ancestral', n, ctx.dataset.example_shape,
        cycle.of(ctx.spec, ctx.dataset),
        decode=ctx.space.decode)
    real = (env.data.train['x'][:2000] if env.data.kind == 'points'
            and env.data.has_examples else None)
    plots.save_samples(x, path,
                       f'{opened.job.name}, {k} steps, step {int(state.step)}',
                       real=real)
  return preview


def bound_loop(env, planned: PlannedJob, artifacts: dict) -> train.Loop:
  """A planned job opened without reading its directory, bound on
  `artifacts` and made the loop's `Loop` (bench-like tools, tests)."""
  opened = open_job(env, planned, read=False)
  bind(opened, artifacts)
  return loop_of(env, opened)


def abstract_jobs(env, config, methods):
  """Every job of `methods` and of the providers they need, in plan order,
  opened without reading anything and bound on abstract artifacts:
  ({job name: Opened}, {artifact: shapes}) (bench, the contract test)."""
  from mmd_jax.run import plan as plan_lib
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.stages = tuple(m.name for m in methods)
  opened, shapes = {}, {}
  for planned in plan_lib.make_plan(config).jobs:
    o = opened[planned.job.name] = open_job(env, planned, read=False)
    bind(o, {a: shapes[a] for a in needs_of(planned)})
    if o.bound.publish is not None:
      shapes.update(o.bound.publish(abstract_state(env, o)))
  return opened, shapes
