"""report.json (DESIGN.md §3.3) and a human-readable report.md."""
from __future__ import annotations

import json
import os

PRIMARY_METRIC = {'points': 'energy_distance', 'digits': 'fd'}


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
  header = ['model', 'sampler', 'steps'] + metrics
  lines += ['| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header)]
  ref = report.get('reference', {})
  lines.append('| real vs real (reference) | | | ' + ' | '.join(
      _fmt(ref.get(m, '')) for m in metrics) + ' |')
  for r in report['rows']:
    lines.append('| ' + ' | '.join(
        [r['model'], r['sampler'], str(r['steps'])] +
        [_fmt(r['metrics'].get(m, '')) for m in metrics]) + ' |')
  lines.append('')
  for title, path in images.items():
    lines += [f'## {title}', '', f'![{title}]({path})', '']
  return '\n'.join(lines)
