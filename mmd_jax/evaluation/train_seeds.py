"""Report rows over training seeds (config.train_seeds): the copies of one
cell merged into one row, and paired differences between cells.

A merged row's `metrics` is the mean over training seeds of each copy's
mean over evaluation seeds; `metrics_std` is the sample std over training
seeds (what the tables' ± and the plots' error bars show); `eval_seed_std`
is the mean of the copies' own evaluation-seed stds; `train_seeds` lists
each copy's numbers. Evaluation draws the same noise for every copy and
every model (common random numbers), and copy i of every method shares the
teacher, so the difference between two methods' copy i is one paired draw
of their difference: `paired` gives its mean and 95% t-interval.
"""
from __future__ import annotations

import json
import re

import numpy as np
from scipy import stats


# Copy i > 0 of a job trains in `<name>_seed<i>` (run/plan.py).
SEED_SUFFIX = '_seed'


def cell_of(stage: str) -> str:
  """The directory name of copy 0 of the cell `stage` belongs to."""
  return re.sub(rf'{SEED_SUFFIX}\d+$', '', stage)


def _cell_key(row):
  return (row['model'], row['sampler'], int(row['steps']),
          json.dumps(row.get('setting'), sort_keys=True))


def merge(rows: list) -> list:
  """Rows in first-seen order, the copies of each cell (rows carrying a
  `train_seed`) merged into one; other rows as they are."""
  groups, out = {}, []
  for row in rows:
    if row.get('train_seed') is None:
      out.append(row)
      continue
    key = _cell_key(row)
    if key not in groups:
      groups[key] = []
      out.append(key)
    groups[key].append(row)
  return [_merged(groups[r]) if isinstance(r, tuple) else r for r in out]


def _merged(copies: list) -> dict:
  copies = sorted(copies, key=lambda r: r['train_seed'])
  first = copies[0]
  names = [m for m in first['metrics']
           if all(m in c['metrics'] for c in copies)]
  row = {k: first[k] for k in ('model', 'sampler', 'steps')}
  values = {m: np.array([c['metrics'][m] for c in copies], float)
            for m in names}
  # NaN stays NaN: a copy that diverged is not averaged away.
  row['metrics'] = {m: float(v.mean()) for m, v in values.items()}
  if len(copies) > 1:
    row['metrics_std'] = {m: float(v.std(ddof=1)) for m, v in values.items()}
  row['std_over'] = 'train_seeds'
  row['num_train_seeds'] = len(copies)
  if 'num_seeds' in first:
    row['num_seeds'] = first['num_seeds']
    row['eval_seed_std'] = {
        m: float(np.mean([c['metrics_std'][m] for c in copies]))
        for m in names if all(m in c.get('metrics_std', {}) for c in copies)}
  row['sample_seconds'] = first.get('sample_seconds')
  per_step = [c['train_seconds_per_step'] for c in copies
              if c.get('train_seconds_per_step') is not None]
  if per_step:
    row['train_seconds_per_step'] = round(float(np.mean(per_step)), 5)
  if 'cost' in first:
    row['cost'] = dict(first['cost'])
    secs = [c['cost'].get('train_seconds') for c in copies]
    if all(s is not None for s in secs):
      row['cost']['train_seconds'] = float(np.mean(secs))
  if first.get('setting') is not None:
    row['setting'] = first['setting']
  row['train_seeds'] = [
      {'train_seed': c['train_seed'], 'metrics': c['metrics'],
       **({'metrics_std': c['metrics_std']} if 'metrics_std' in c else {})}
      for c in copies]
  return row


def interval(diffs, level: float = 0.95) -> tuple:
  """(mean, half-width of the `level` t-interval) of paired differences;
  the half-width is NaN with fewer than two."""
  d = np.asarray(diffs, float)
  if len(d) < 2:
    return float(d.mean()), float('nan')
  half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(
      len(d))
  return float(d.mean()), float(half)


def paired(a: dict, b: dict, metric: str) -> dict | None:
  """Row a minus row b on `metric`, paired by training seed: {'mean',
  'half_width', 'n'}; None unless both rows have copies with the metric.
  A many-step model's row (no copies) enters as a constant."""
  va, vb = _by_seed(a, metric), _by_seed(b, metric)
  copies = [v for v in (va, vb) if isinstance(v, dict)]
  if va is None or vb is None or not copies:
    return None
  # A constant takes the seeds of the other row.
  va, vb = (v if isinstance(v, dict) else dict.fromkeys(copies[0], v)
            for v in (va, vb))
  seeds = sorted(set(va) & set(vb))
  if not seeds:
    return None
  mean, half = interval([va[s] - vb[s] for s in seeds])
  return {'mean': mean, 'half_width': half, 'n': len(seeds)}


def _by_seed(row: dict, metric: str):
  """{train seed: value} of a merged row, the value of a row without
  copies, or None without the metric."""
  if 'train_seeds' in row:
    out = {c['train_seed']: c['metrics'][metric] for c in row['train_seeds']
           if metric in c['metrics']}
    return out or None
  return row['metrics'].get(metric)


def verdict(d: dict, lower_is_better: bool = True) -> str:
  """Which side the interval puts the first row on."""
  lo, hi = d['mean'] - d['half_width'], d['mean'] + d['half_width']
  if not np.isfinite(lo):
    return 'one seed'
  if hi < 0:
    return 'first better' if lower_is_better else 'second better'
  if lo > 0:
    return 'second better' if lower_is_better else 'first better'
  return 'not resolved'


def paired_table(rows: list, metric: str,
                 lower_is_better: bool = True) -> list:
  """Markdown lines: at every k, each pair of students with copies,
  first minus second, with its 95% interval over training seeds."""
  students = [r for r in rows if r['sampler'] == 'student'
              and 'train_seeds' in r and metric in r['metrics']]
  if not students:
    return []
  out = []
  for k in sorted({r['steps'] for r in students}):
    at_k = [r for r in students if r['steps'] == k]
    for i, a in enumerate(at_k):
      for b in at_k[i + 1:]:
        d = paired(a, b, metric)
        if d is None:
          continue
        out.append(
            f"| {k} | {_name(a)} | {_name(b)} | {d['mean']:.4g} | "
            f"[{d['mean'] - d['half_width']:.4g}, "
            f"{d['mean'] + d['half_width']:.4g}] | {d['n']} | "
            f'{verdict(d, lower_is_better)} |')
  if not out:   # one method: nothing to pair
    return []
  return [f'## Paired differences over training seeds: {metric}', '',
          'First minus second, paired by training seed (copy i of each '
          'shares the teacher and the evaluation noise); 95% t-interval '
          'over training seeds.', '',
          '| k | first | second | difference | 95% interval | n | verdict |',
          '|---|---|---|---|---|---|---|'] + out + ['']


def _name(row):
  return row['model']
