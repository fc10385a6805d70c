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
  lines += _settings_table(report['rows'], metrics)
  for title, path in images.items():
    lines += [f'## {title}', '', f'![{title}]({path})', '']
  return '\n'.join(lines)


def _settings_table(rows, metrics) -> list:
  """One-step generators side by side with their EMD settings."""
  gen = [r for r in rows if 'langevin_steps' in r.get('setting', {})]
  out = _vae_table(rows)
  if not gen:
    return out
  header = ['model', 'K', 'chain', 'cancellation', 'gamma_eps', 'gamma_z',
            'train s/step'] + metrics
  out += ['## One-step generators: EMD settings', '',
         '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in gen:
    st = r['setting']
    chain = '(eps, z)' if st['parameterization'] == 'eps' else '(x_t, z)'
    out.append('| ' + ' | '.join(
        [r['model'], str(st['langevin_steps']), chain,
         st['noise_cancellation'], _fmt(st['gamma_eps']), _fmt(st['gamma_z']),
         _fmt(r.get('train_seconds_per_step', ''))] +
        [_fmt(r['metrics'].get(m, '')) for m in metrics]) + ' |')
  return out + ['']


def _vae_table(rows) -> list:
  vaes = [r for r in rows if r['model'] == 'vae']
  if not vaes:
    return []
  out = ['## VAE (nats per datapoint, held-out data)', '',
         '| latent | arch | likelihood | split | ELBO | IWAE log-likelihood '
         '| K |', '|---|---|---|---|---|---|---|']
  for r in vaes:
    st, m = r['setting'], r['metrics']
    out.append(f"| {st['latent_dim']} | {st['arch']} | {st['likelihood']} | "
               f"{st['split']} ({st['num_examples']}) | {_fmt(m['elbo'])} | "
               f"{_fmt(m['log_likelihood'])} | {st['iwae_samples']} |")
  return out + ['']
