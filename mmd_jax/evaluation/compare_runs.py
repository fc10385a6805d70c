"""One cell (a student's model and k) across workdirs that differ in one
setting, each trained over config.train_seeds: the spread over training
seeds, the worst seed, and the paired difference from the first workdir.

  python -m mmd_jax.evaluation.compare_runs \
      --runs=base=W0,flat=W1,grid=W2 --model=mm_alternating --steps=8 \
      [--metric=fd] [--reference=teacher:ancestral:8] \
      [--output=F.md]

Copy i of a cell trains from the key of its directory name, and the
directory names are the same in every workdir: with one teacher imported
into all of them, copy i of every workdir starts from the same key and
data order, so the difference between two workdirs' copy i is a paired
draw (common random numbers). Lower is better for every primary metric.
"""
from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from mmd_jax.evaluation import report as report_lib
from mmd_jax.evaluation import train_seeds
from mmd_jax.workdir import fs


def _row(report: dict, model: str, sampler: str, steps: int):
  for r in report['rows']:
    if (r['model'], r['sampler'], int(r['steps'])) == (model, sampler, steps):
      return r
  return None


def primary_metric(report: dict) -> str:
  """The report's leaderboard metric: the primary metric its rows carry."""
  present = {m for r in report['rows'] for m in r.get('metrics', {})}
  for metric in report_lib.PRIMARY_METRIC.values():
    if metric in present:
      return metric
  raise SystemExit('--metric: the report has no primary metric; name one of '
                   + ', '.join(sorted(present)))


# This run against the first one.
_VERDICT = {'first better': 'better', 'second better': 'worse',
            'not resolved': 'not resolved', 'one seed': 'one seed'}


def table(runs: list, model: str, steps: int, metric: str,
          reference: tuple | None = None) -> str:
  """Markdown: one line per (name, report) of `runs`."""
  first = None
  ref_value = None
  lines = []
  seeds = max(r.get('num_train_seeds', 1) for _, rep in runs
              for r in [_row(rep, model, 'student', steps) or {}])
  head = (['run'] + [f'seed {i}' for i in range(seeds)] +
          ['mean ± train-seed std', 'eval-seed std', 'worst'] +
          (['worst / reference'] if reference else []) +
          ['paired vs first (95%)'])
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, rep in runs:
    row = _row(rep, model, 'student', steps)
    if row is None:
      lines.append(f'| {name} | no {model} k={steps} row |')
      continue
    if metric not in row['metrics']:
      raise SystemExit(f'--metric={metric}: {name} has no such metric; it has '
                       + ', '.join(sorted(row['metrics'])))
    if reference and ref_value is None:
      ref = _row(rep, *reference)
      ref_value = ref['metrics'].get(metric) if ref else None
    per = {c['train_seed']: c['metrics'].get(metric, float('nan'))
           for c in row.get('train_seeds', [{'train_seed': 0,
                                             'metrics': row['metrics']}])}
    vals = np.array(list(per.values()), float)
    std = row.get('metrics_std', {}).get(metric, float('nan'))
    ev = row.get('eval_seed_std', {}).get(metric, float('nan'))
    worst = float(np.max(vals))
    cells = [name] + [f'{per[i]:.4g}' if i in per else ''
                      for i in range(seeds)]
    cells += [f"{row['metrics'][metric]:.4g} ± {std:.2g}", f'{ev:.2g}',
              f'{worst:.4g}']
    if reference:
      cells.append('' if ref_value is None else f'{worst / ref_value:.2f}')
    if first is None:
      first = row
      cells.append('')
    else:
      d = train_seeds.paired(row, first, metric)
      cells.append('' if d is None else
                   f"{d['mean']:+.2g} [{d['mean'] - d['half_width']:+.2g}, "
                   f"{d['mean'] + d['half_width']:+.2g}] "
                   f'{_VERDICT[train_seeds.verdict(d)]}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  if reference and ref_value is not None:
    lines += ['', f'reference {":".join(map(str, reference))}: '
              f'{ref_value:.4g}']
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  runs = []
  for item in filter(None, f.runs.split(',')):
    name, _, workdir = item.partition('=')
    path = fs.path(workdir) / 'report.json'
    if not path.exists():
      raise SystemExit(f'--runs: {workdir} has no report.json')
    runs.append((name, json.loads(path.read_text())))
  reference = None
  if f.reference:
    m, s, k = f.reference.split(':')
    reference = (m, s, int(k))
  metric = f.metric or primary_metric(runs[0][1])
  text = table(runs, f.model, f.steps, metric, reference)
  if f.output:
    fs.write_text(f.output, text + '\n')
  print(text)


if __name__ == '__main__':
  flags.DEFINE_string('runs', None, 'Comma-separated name=workdir pairs; '
                      'the first is the baseline of the paired differences.')
  flags.DEFINE_string('model', 'mm_alternating', 'The student model.')
  flags.DEFINE_integer('steps', 8, 'Its k.')
  flags.DEFINE_string('metric', '', 'The metric; default: the report\'s '
                      'leaderboard metric (energy_distance, fd, fid, ...).')
  flags.DEFINE_string('reference', '', 'model:sampler:steps of a reference '
                      'row, e.g. teacher:ancestral:8.')
  flags.DEFINE_string('output', '', 'Also write the table here.')
  flags.mark_flags_as_required(['runs'])
  app.run(main)
