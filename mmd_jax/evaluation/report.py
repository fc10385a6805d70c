"""report.json (DESIGN.md §3.3) and a human-readable report.md."""
from __future__ import annotations

import json
import os

from mmd_jax.evaluation import train_seeds
from mmd_jax.workdir import fs

PRIMARY_METRIC = {'points': 'energy_distance', 'digits': 'fd', 'images': 'fid',
                  'arrays': 'fd_raw'}


def write_report(workdir: str, report: dict, images: dict,
                 metric: str | None = None):
  fs.write_text(os.path.join(workdir, 'report.json'),
                json.dumps(report, indent=2))
  fs.write_text(os.path.join(workdir, 'report.md'),
                render_markdown(report, images, metric))


def _fmt(v):
  if isinstance(v, float):
    return f'{v:.4g}'
  return str(v)


def _cell(row, m):
  """'mean ± std' when the row has seeds, else the value ('' if absent)."""
  if m not in row['metrics']:
    return ''
  std = row.get('metrics_std', {}).get(m)
  v = _fmt(row['metrics'][m])
  return v if std is None else f'{v} ± {std:.2g}'


def _count(n):
  for unit, size in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if n >= size:
      return f'{n / size:.3g}{unit}'
  return str(n)


def _cost_cell(cost):
  if not cost:
    return ''
  s = cost.get('train_seconds')
  return (f"{_count(cost['train_examples'])} ex, "
          f"{_count(cost['teacher_evals'])} teacher evals"
          + ('' if s is None else f', {s:.0f} s'))


def leaderboard(rows, metric: str) -> list:
  """Markdown lines: the students' `metric` (mean ± std) by method and k,
  the many-step models' samplers at the same k for reference, and what
  each student cost. Empty without student rows."""
  students = [r for r in rows if r['sampler'] == 'student'
              and metric in r['metrics']]
  if not students:
    return []
  ks = sorted({r['steps'] for r in students})
  methods = list(dict.fromkeys(r['model'] for r in students))
  cell = {(r['model'], r['steps']): r for r in students}
  refs = {}
  for r in rows:
    if r['sampler'] != 'student' and r['steps'] in ks and metric in r[
        'metrics']:
      refs.setdefault(f"{r['model']} ({r['sampler']}, reference)",
                      {})[r['steps']] = r
  head = ['method'] + [f'k={k}' for k in ks]
  out = [f'## Leaderboard: {metric} ({_std_words(students)})', '',
         '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for m in methods:
    out.append('| ' + ' | '.join([m] + [
        _cell(cell[(m, k)], metric) if (m, k) in cell else ''
        for k in ks]) + ' |')
  for name, by_k in refs.items():
    out.append('| ' + ' | '.join([name] + [
        _cell(by_k[k], metric) if k in by_k else '' for k in ks]) + ' |')
  if any('cost' in r for r in students):
    out += ['', '### Training cost (examples, teacher network evaluations, '
            'wall time; a job that starts from another includes its cost)',
            '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m in methods:
      out.append('| ' + ' | '.join([m] + [
          _cost_cell(cell[(m, k)].get('cost')) if (m, k) in cell else ''
          for k in ks]) + ' |')
  return out + ['']


def _std_words(students) -> str:
  """Which spread the ± of the students' cells is."""
  n = {r.get('num_train_seeds') for r in students}
  if n != {None}:
    counts = '/'.join(str(c) for c in sorted(c for c in n if c))
    return (f'mean ± std over {counts} training seeds, each scored over its '
            'evaluation seeds; the many-step references: ± over evaluation '
            'seeds')
  return ('mean ± std over evaluation seeds of one trained copy; set '
          'train_seeds for the spread over training')


def render_markdown(report: dict, images: dict, metric: str | None = None
                    ) -> str:
  metrics = []
  for r in report['rows']:
    for m in r['metrics']:
      if m not in metrics:
        metrics.append(m)
  lines = [f"# mmd_jax report: {report['dataset']}", '']
  extra = {k: v for k, v in report.items()
           if k not in ('dataset', 'reference', 'rows', 'kind')}
  for k, v in extra.items():
    lines.append(f'- {k}: {json.dumps(v)}')
  if extra:
    lines.append('')
  seeded = [r for r in report['rows'] if r.get('num_train_seeds')]
  if seeded:
    lines += [f"Rows trained {seeded[0]['num_train_seeds']} times "
              '(config.train_seeds): ± is the std over training seeds (each '
              "copy's evaluation-seed std is `eval_seed_std` in "
              'report.json); other rows: ± over evaluation seeds.', '']
  cost = any('train_seconds_per_step' in r for r in report['rows'])
  header = ['model', 'sampler', 'steps'] + metrics + (
      ['train s/step'] if cost else [])
  lines += ['| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header)]
  ref = report.get('reference', {})
  lines.append('| real vs real (reference) | | | ' + ' | '.join(
      _fmt(ref.get(m, '')) for m in metrics) + (' | |' if cost else ' |'))
  for r in report['rows']:
    lines.append('| ' + ' | '.join(
        [r['model'], r['sampler'], str(r['steps'])] +
        [_cell(r, m) for m in metrics] +
        ([_fmt(r.get('train_seconds_per_step', ''))] if cost else [])) + ' |')
  lines.append('')
  if metric:
    lines += leaderboard(report['rows'], metric)
    lines += train_seeds.paired_table(report['rows'], metric)
  lines += _settings_tables(report['rows'])
  for title, path in images.items():
    lines += [f'## {title}', '', f'![{title}]({path})', '']
  return '\n'.join(lines)


def _settings_tables(rows) -> list:
  """The rows that carry a `setting` (a sweep's generators, a VAE), side by
  side with it: one table per set of setting keys, with the metrics those
  rows have. Nothing here knows a method."""
  groups = {}
  for r in rows:
    if r.get('setting'):
      groups.setdefault(tuple(r['setting']), []).append(r)
  out = []
  for keys, group in groups.items():
    metrics = []
    for r in group:
      metrics += [m for m in r['metrics'] if m not in metrics]
    cost = any('train_seconds_per_step' in r for r in group)
    header = ['model', *keys] + (['train s/step'] if cost else []) + metrics
    models = sorted({r['model'].split('[')[0] for r in group})
    out += [f"## Settings: {', '.join(models)}", '',
            '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in group:
      out.append('| ' + ' | '.join(
          [r['model']] + [_fmt(r['setting'][k]) for k in keys] +
          ([_fmt(r.get('train_seconds_per_step', ''))] if cost else []) +
          [_cell(r, m) for m in metrics]) + ' |')
    out.append('')
  return out
