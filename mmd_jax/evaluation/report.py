"""report.json (DESIGN.md §3.3) and a human-readable report.md."""
from __future__ import annotations

import json
import os

PRIMARY_METRIC = {'points': 'energy_distance', 'digits': 'fd', 'images': 'fid'}


def write_report(workdir: str, report: dict, images: dict):
  tmp = os.path.join(workdir, 'report.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, os.path.join(workdir, 'report.json'))
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(render_markdown(report, images))


def _fmt(v):
  if isinstance(v, float):
    return f'{v:.4g}'
  return str(v)


def render_markdown(report: dict, images: dict) -> str:
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
        [_fmt(r['metrics'].get(m, '')) for m in metrics] +
        ([_fmt(r.get('train_seconds_per_step', ''))] if cost else [])) + ' |')
  lines.append('')
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
          [_fmt(r['metrics'].get(m, '')) for m in metrics]) + ' |')
    out.append('')
  return out
