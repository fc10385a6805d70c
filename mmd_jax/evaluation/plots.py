"""PNG pictures: scatter plots for 2-D data, sample grids for images, and
quality-vs-steps curves."""
from __future__ import annotations

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmd_jax.workdir import fs  # noqa: E402


def image_grid(images, ncol: int = 10) -> np.ndarray:
  """(N, H, W, C), uint8 or in [-1, 1] -> one (rows*H, ncol*W[, 3]) array
  in [0, 1]: grey for one channel, RGB for three."""
  x = np.asarray(images)
  x = x / 255.0 if x.dtype == np.uint8 else np.clip((x + 1) / 2, 0, 1)
  n, h, w = x.shape[:3]
  # Grey for one channel; latents of other widths show their first.
  x = x[..., :3] if x.shape[-1] == 3 else x[..., 0]
  rows = -(-n // ncol)
  grid = np.ones((rows * (h + 1) + 1, ncol * (w + 1) + 1) + x.shape[3:])
  for i in range(n):
    r, c = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i]
  return grid


def save_samples(samples, path: str, title: str = '', real=None):
  """Scatter for (N, 2) data, an image grid for (N, H, W, C)."""
  samples = np.asarray(samples)
  fig, ax = plt.subplots(figsize=(5, 5))
  if samples.ndim == 2:
    if real is not None:
      ax.scatter(real[:, 0], real[:, 1], s=2, c='lightgray', label='data')
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c='tab:blue', alpha=0.6,
               label='samples')
    ax.set_aspect('equal')
    ax.legend(loc='upper right', markerscale=4, fontsize=8)
  else:
    ax.imshow(image_grid(samples[:100]), cmap='gray', vmin=0, vmax=1)
    ax.axis('off')
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=110)
  plt.close(fig)


def save_panel(panels, path: str, real=None):
  """One subplot per (title, samples) pair, e.g. the teacher at each k."""
  n = len(panels)
  ncol = min(n, 4)
  nrow = -(-n // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow),
                           squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis('off')
  for ax, (title, s) in zip(axes.flat, panels):
    s = np.asarray(s)
    if s.ndim == 2:
      if real is not None:
        ax.scatter(real[:, 0], real[:, 1], s=1, c='lightgray')
      ax.scatter(s[:, 0], s[:, 1], s=1, c='tab:blue', alpha=0.5)
      ax.set_xlim(-3, 3)
      ax.set_ylim(-3, 3)
      ax.set_aspect('equal')
    else:
      ax.imshow(image_grid(s[:50], ncol=10), cmap='gray', vmin=0, vmax=1)
      ax.axis('off')
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _groups(rows, metric, keep=lambda r: True):
  """{'model (sampler)': [(k, mean, std)]} sorted by k; std 0 without seeds."""
  groups = {}
  for r in rows:
    # NaN (non-finite samples) has no place on the axes; the report says it.
    if metric in r['metrics'] and keep(r) and np.isfinite(
        r['metrics'][metric]):
      groups.setdefault(f"{r['model']} ({r['sampler']})", []).append(
          (r['steps'], r['metrics'][metric],
           r.get('metrics_std', {}).get(metric, 0.0)))
  return {name: sorted(pts) for name, pts in sorted(groups.items())}


def quality_vs_steps(rows, metric: str, reference: float | None, path: str):
  """One line per (model, sampler) over sampling steps, with error bars of
  one standard deviation over evaluation seeds; log-log axes."""
  fig, ax = plt.subplots(figsize=(6, 4))
  groups = _groups(rows, metric)
  for name, pts in groups.items():
    xs, ys, es = zip(*pts)
    ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=name)
  _finish(ax, fig, groups, metric, reference, path)


def leaderboard(rows, metric: str, reference: float | None, path: str
                ) -> bool:
  """The students' metric against k, one line per method with seed error
  bars, and each many-step model's sampler over the same k as dashed
  references. False (no picture) without student rows."""
  student = lambda r: r['sampler'] == 'student'
  methods = _groups(rows, metric, student)
  if not methods:
    return False
  ks = {k for pts in methods.values() for k, _, _ in pts}
  refs = _groups(rows, metric, lambda r: not student(r) and r['steps'] <= max(
      ks))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, pts in methods.items():
    xs, ys, es = zip(*pts)
    ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3,
                label=name.replace(' (student)', ''))
  for name, pts in refs.items():
    xs, ys, es = zip(*pts)
    ax.errorbar(xs, ys, yerr=es, ls='--', color='gray', marker='.',
                capsize=2, alpha=0.8, label=name)
  n = max((r.get('num_train_seeds', 0) for r in rows if student(r)),
          default=0)
  ax.set_title(f'error bars: std over {n} training seeds (students), '
               'evaluation seeds (references)' if n else
               'error bars: std over evaluation seeds of one trained copy',
               fontsize=9)
  _finish(ax, fig, {**methods, **refs}, metric, reference, path)
  return True


def _finish(ax, fig, groups, metric, reference, path):
  if reference is not None:
    ax.axhline(reference, color='black', ls=':', label='real vs real')
  ax.set_xscale('log', base=2)
  ys = [y for pts in groups.values() for _, y, _ in pts]
  if ys and all(y > 0 for y in ys):
    ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  if groups or reference is not None:   # prompts-only runs have no metric
    ax.legend(fontsize=8)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=110)
  plt.close(fig)
