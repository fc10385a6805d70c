"""Tune a sampler's time spacing per k on one evaluation seed, then report
it on fresh ones, over training seeds.

  python -m mmd_jax.evaluation.tune_sampler \
      --stages=W/consistency_k1,W/consistency_k1_seed1,W/consistency_k1_seed2 \
      --steps=2,4,8 --powers=0.5,1,1.5,2,3 [--sampler=ancestral] \
      [--num_seeds=3] [--output=F.json]

The time points are t_i = (1 - i/k)^power (mmd_jax.numerics.sampling's
`time_grid`): power 1 is the uniform grid every sampler uses by default;
above 1 the first step lands lower and the steps crowd at low noise. Works
for every stage whose sampler takes a spacing: consistency models,
many-step teachers (their ancestral and DDIM samplers), and moment-matching
and progressive students at their own k (they were trained for the
uniform grid, so this tests that choice: pass one k's copies per call).

Every stage (one per training seed) is scored at every (k, power) on the
tuning seed (`eval.seed - 1` of the stage's config, never an evaluation
seed); the power with the lowest mean over the stages is chosen per k.
Then power 1 and the chosen power are scored on `num_seeds` fresh seeds
(the run's evaluation seeds), per stage, and compared as paired
differences over training seeds. Prints a markdown table and the config
line that sets the chosen powers.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags, logging

from mmd_jax.evaluation import cycle, evaluate, report, train_seeds
from mmd_jax.workdir import fs


def _score(stage, scorer, draw, k, sampler, key) -> dict:
  env, ctx = stage.env, stage.ctx
  e = env.config.eval
  bad = []
  samples, labels = evaluate.generate(
      draw, stage.state.sampling_params, key, e.num_samples, k, sampler,
      e.batch_size, ctx.dataset.example_shape,
      cycle.of(ctx.spec, ctx.dataset), decode=ctx.space.decode,
      quantize=env.data.kind == 'images', nonfinite=bad)
  return scorer.score(samples, labels, sum(bad))


def tune(stages: list, steps, powers, sampler: str = 'ancestral',
         num_seeds: int = 3) -> dict:
  """{'metric', 'tuning': {k: {power: [per stage]}}, 'chosen': {k: power},
  'fresh': {k: {'default': [per stage], 'tuned': [per stage]}}} (each
  per-stage entry: the metric's mean over the fresh seeds)."""
  draws = []
  for s in stages:
    d = s.bound.sampling.draw
    if not hasattr(d, 'TIME_POWERS_KEY'):
      raise SystemExit(f'--stages: {s.opened.stage_dir} samples with '
                       f'{type(d).__name__}, which takes no time spacing')
    draws.append(d)
  # Copies of one cell share a workdir, hence its reference set.
  by_workdir = {}
  for s in stages:
    if s.env.workdir not in by_workdir:
      by_workdir[s.env.workdir] = evaluate.Scorer(s.env.config, s.env.data,
                                                  s.env.workdir)
  scorers = [by_workdir[s.env.workdir] for s in stages]
  metric = report.PRIMARY_METRIC[stages[0].env.data.kind]
  e = stages[0].env.config.eval
  tune_key = jax.random.PRNGKey(e.seed - 1)
  fresh = evaluate.seed_keys(e.seed, num_seeds)
  out = {'metric': metric, 'sampler': sampler, 'tuning': {}, 'chosen': {},
         'fresh': {}}
  for k in steps:
    per_power = {}
    for p in powers:
      per_power[p] = [
          float(_score(s, sc, d.with_time_power(k, p), k, sampler,
                       tune_key)[metric])
          for s, sc, d in zip(stages, scorers, draws)]
      logging.info('tune k=%d power=%g: %s', k, p, per_power[p])
    out['tuning'][k] = per_power
    best = min(powers, key=lambda p: np.mean(per_power[p]))
    out['chosen'][k] = best
    out['fresh'][k] = {}
    for name, p in (('default', 1.0), ('tuned', best)):
      out['fresh'][k][name] = [
          float(np.mean([_score(s, sc, d.with_time_power(k, p), k, sampler,
                                key)[metric] for key in fresh]))
          for s, sc, d in zip(stages, scorers, draws)]
  return out


def markdown(result: dict) -> str:
  m = result['metric']
  powers = list(next(iter(result['tuning'].values())))
  head = (['k'] + [f'power {p:g} (tuning seed)' for p in powers] +
          ['chosen', 'fresh seeds: power 1', 'fresh seeds: chosen',
           'chosen − 1 (95%, paired over training seeds)'])
  lines = [f'{m}, mean over training seeds (± their std)', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for k, per_power in result['tuning'].items():
    f = result['fresh'][k]
    cells = [str(k)] + [f'{np.mean(per_power[p]):.4g}' for p in powers]
    cells.append(f"{result['chosen'][k]:g}")
    for name in ('default', 'tuned'):
      v = np.array(f[name])
      cells.append(f'{v.mean():.4g} ± {v.std(ddof=1):.2g}' if len(v) > 1
                   else f'{v.mean():.4g}')
    mean, half = train_seeds.interval(np.array(f['tuned']) -
                                      np.array(f['default']))
    cells.append(f'{mean:+.3g} [{mean - half:+.3g}, {mean + half:+.3g}]'
                 if np.isfinite(half) else f'{mean:+.3g} (one copy)')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def config_line(result: dict, key: str) -> str:
  pairs = ','.join(f'({k},{p:g})' for k, p in result['chosen'].items())
  return f'--config.{key}=({pairs},)'


def main(argv):
  del argv
  from mmd_jax.run.cli import quiet_libraries
  from mmd_jax.run.stage_dir import open_stage
  quiet_libraries()
  f = flags.FLAGS
  stages = [open_stage(s) for s in f.stages]
  result = tune(stages, [int(k) for k in f.steps],
                [float(p) for p in f.powers], f.sampler, f.num_seeds)
  if f.output:
    fs.write_text(f.output, json.dumps(result, indent=2))
  key = stages[0].bound.sampling.draw.TIME_POWERS_KEY
  print(markdown(result))
  print('\n' + config_line(result, key))


if __name__ == '__main__':
  flags.DEFINE_list('stages', None, 'Stage directories: copies of one cell '
                    '(training seeds), or one.')
  flags.DEFINE_list('steps', ['2', '4', '8'], 'The k to tune.')
  flags.DEFINE_list('powers', ['0.5', '1', '1.5', '2', '3'],
                    'Time-spacing powers to try (1 is the default grid).')
  flags.DEFINE_enum('sampler', 'ancestral', ['ancestral', 'ddim'],
                    'Many-step models: the sampler to tune.')
  flags.DEFINE_integer('num_seeds', 3, 'Fresh evaluation seeds to report.')
  flags.DEFINE_string('output', '', 'Also write the result as JSON.')
  flags.mark_flags_as_required(['stages'])
  app.run(main)
