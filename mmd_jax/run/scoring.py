"""The run's `evaluate` stage: restores every job before it, collects the
rows its method scores itself and the samples evaluation scores, and
writes the report."""
from __future__ import annotations

import json
import os

from absl import logging

from mmd_jax.evaluation import cycle
from mmd_jax.evaluation import evaluate as evaluation
from mmd_jax.run import costs
from mmd_jax.run import plan as plan_lib
from mmd_jax.run.checks import powers_of
from mmd_jax.run.jobs import restore


def _entries(r, opened, params) -> list:
  e = r.env.config.eval
  job, ctx, sampling = opened.job, opened.ctx, opened.bound.sampling
  common = dict(model=job.model, draw=sampling.draw, params=params,
                shape=tuple(ctx.dataset.example_shape),
                conditions=cycle.of(ctx.spec, ctx.dataset),
                decode=ctx.space.decode)
  if sampling.steps is None:   # a many-step model: every asked-for sampler
    powers = dict(powers_of(r.env.config, 'eval.time_powers'))
    spaced = lambda k: dict(common, draw=common['draw'].with_time_power(
        k, powers[k])) if k in powers else common
    return [evaluation.Entry(sampler=s, steps=k, draw_sampler=s,
                             guidance=e.guidance, **spaced(k))
            for s in e.samplers for k in e.teacher_steps]
  stored = opened.stored or {}
  return [evaluation.Entry(
      sampler='student', steps=k,
      train_seconds_per_step=stored.get('seconds_per_step'),
      cost=costs.job_cost(job, r.plan.jobs_by_name,
                          lambda j: r.opened[j.name].stored),
      setting=opened.bound.report_setting, train_seed=job.train_seed,
      **common) for k in sampling.report_steps or (sampling.steps,)]


def evaluate(r, items, checkpoint_step=None) -> dict:
  """Scores every job in `items` (opened and bound) and writes the
  report."""
  env = r.env
  entries, rows, images = [], [], {}
  for planned in items:
    if planned is plan_lib.EVALUATE:
      continue
    opened = r.opened[planned.job.name]
    state = restore(env, opened, checkpoint_step)
    if opened.bound.report is not None:
      more, pictures = opened.bound.report(state, env.config.eval.seed)
      rows += more
      images.update(pictures)
    if opened.bound.sampling is not None:
      entries += _entries(r, opened, state.sampling_params)
  rep = evaluation.run(env.config, env.workdir, env.data, entries, rows,
                       images)
  logging.info('report written to %s', os.path.join(env.workdir, 'report.md'))
  logging.info('reference (real vs real): %s', json.dumps(rep['reference']))
  for row in rep['rows']:
    logging.info('%-24s %-9s k=%-4d %s', row['model'], row['sampler'],
                 row['steps'], json.dumps({k: round(v, 5) for k, v in
                                           row['metrics'].items()}))
  return rep
