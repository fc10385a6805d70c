"""One table over several training seeds: the report.json of each workdir
(the same config, a different --config.seed) merged row by row; a row
already merged over config.train_seeds counts each of its copies.

  python -m mmd_jax.evaluation.across_seeds --workdirs=W0,W1 \
      [--metrics=energy_distance,mode_ratio_min] [--output=F.json] [--curves]

A row (model, sampler, steps) gets the mean over workdirs of its metrics,
their sample standard deviation across workdirs (the training-seed spread,
which a single report cannot show), and the mean of each report's own
evaluation-seed std. Prints a markdown table; --output also writes JSON.
--curves adds the quality during training (W/<stage>/quality.jsonl, written
with eval.every_steps > 0), merged the same way per (stage, step); the
final step is the report's row, so it is not repeated there.
"""
from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from mmd_jax.evaluation import train_seeds
from mmd_jax.workdir import fs

DEFAULT_METRICS = ('energy_distance', 'mode_ratio_min', 'mode_weight_error',
                   'mode_coverage')


def _key(row):
  return (row['model'], row['sampler'], int(row['steps']))


def combine(reports: list[dict], metrics=None) -> list[dict]:
  """Rows in first-seen order. `metrics` (default: all) limits the metrics.
  A row missing from some reports is averaged over those that have it and
  says how many (`num_train_seeds`)."""
  groups: dict = {}
  for report in reports:
    for row in report['rows']:
      groups.setdefault(_key(row), []).extend(_copies(row))
  out = []
  for (model, sampler, steps), rows in groups.items():
    names = [m for m in rows[0]['metrics'] if metrics is None or m in metrics]
    merged = {'model': model, 'sampler': sampler, 'steps': steps,
              'num_train_seeds': len(rows), 'metrics': {},
              'train_seed_std': {}, 'eval_seed_std': {}}
    for m in names:
      merged['metrics'][m], merged['train_seed_std'][m] = _stats(
          [r['metrics'][m] for r in rows if m in r['metrics']])
      ev = [r['metrics_std'][m] for r in rows if m in r.get('metrics_std', {})]
      if ev:
        merged['eval_seed_std'][m] = float(np.mean(ev))
    per_step = [r['train_seconds_per_step'] for r in rows
                if r.get('train_seconds_per_step')]
    if per_step:
      merged['train_seconds_per_step'] = float(np.mean(per_step))
    out.append(merged)
  return out


def _copies(row: dict) -> list:
  """A report row as one row per trained copy: a row merged over
  config.train_seeds counts each copy as a training seed."""
  if 'train_seeds' not in row:
    return [row]
  return [{**row, 'metrics': c['metrics'],
           'metrics_std': c.get('metrics_std', {})}
          for c in row['train_seeds']]


def _cell(row: dict, metric: str) -> str:
  """'mean ± train-seed std', or empty where the row lacks the metric."""
  if metric not in row['metrics']:
    return ''
  return f"{row['metrics'][metric]:.4g} ± {row['train_seed_std'][metric]:.2g}"


def markdown(rows: list[dict], metrics) -> str:
  """'mean ± train-seed std' per metric, then the seconds per step."""
  head = ['model', 'k', 'seeds'] + list(metrics) + ['s/step']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['model'], str(r['steps']), str(r['num_train_seeds'])]
    cells += [_cell(r, m) for m in metrics]
    s = r.get('train_seconds_per_step')
    cells.append('' if s is None else f'{s:.3g}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _stats(values: list[float]) -> tuple[float, float]:
  v = np.array(values)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def curves(workdirs: list[str], metrics=None) -> list[dict]:
  """Per (stage, step), over the workdirs whose quality.jsonl has it: the
  mean and training-seed std of each metric ('eval/' dropped)."""
  groups: dict = {}
  for w in workdirs:
    for stage in sorted(fs.listdir(w)):
      log = fs.path(w) / stage / 'quality.jsonl'
      if not log.exists():
        continue
      for line in filter(None, log.read_text().splitlines()):
        rec = json.loads(line)
        groups.setdefault((train_seeds.cell_of(stage),
                           int(rec.pop('step'))), []).append(
            {k.removeprefix('eval/'): v for k, v in rec.items()})
  out = []
  for (stage, step), recs in sorted(groups.items()):
    row = {'stage': stage, 'step': step, 'num_train_seeds': len(recs),
           'metrics': {}, 'train_seed_std': {}}
    for m in recs[0]:
      if metrics is None or m in metrics:
        row['metrics'][m], row['train_seed_std'][m] = _stats(
            [r[m] for r in recs if m in r])
    out.append(row)
  return out


def curves_markdown(rows: list[dict], metrics) -> str:
  head = ['stage', 'step', 'seeds'] + list(metrics)
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['stage'], str(r['step']), str(r['num_train_seeds'])]
    cells += [_cell(r, m) for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run(workdirs: list[str], metrics=DEFAULT_METRICS, output: str = '',
        with_curves: bool = False) -> str:
  """The markdown table of `workdirs`' reports (and, `with_curves`, of their
  quality during training); also the JSON at `output`."""
  reports = []
  for w in workdirs:
    path = fs.path(w) / 'report.json'
    if not path.exists():
      raise SystemExit(f'--workdirs: {w} has no report.json (run evaluation '
                       'first)')
    reports.append(json.loads(path.read_text()))
  rows = combine(reports, metrics)
  merged = {'workdirs': list(workdirs), 'rows': rows}
  text = markdown(rows, metrics)
  if with_curves:
    merged['curves'] = curves(workdirs, metrics)
    text += '\n\nDuring training:\n\n' + curves_markdown(merged['curves'],
                                                       metrics)
  if output:
    fs.write_text(output, json.dumps(merged, indent=2))
  return text


def main(argv):
  del argv
  f = flags.FLAGS
  metrics = tuple(filter(None, f.metrics.split(','))) or DEFAULT_METRICS
  print(run(list(filter(None, f.workdirs.split(','))), metrics, f.output,
            f.curves))


if __name__ == '__main__':
  flags.DEFINE_string('workdirs', None, 'Comma-separated workdirs.')
  flags.DEFINE_string('metrics', ','.join(DEFAULT_METRICS),
                      'Comma-separated metrics for the table.')
  flags.DEFINE_string('output', '', 'Also write the merged rows as JSON.')
  flags.DEFINE_bool('curves', False, 'Also merge each stage\'s '
                    'quality.jsonl (the metrics during training).')
  flags.mark_flags_as_required(['workdirs'])
  app.run(main)
