"""Per-caption pictures of a caption-conditioned run: one row (images) or
one panel (points) per caption, titled with the caption's text, so a
reader sees at a glance whether each caption is followed."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmd_jax.evaluation.plots import image_grid  # noqa: E402
from mmd_jax.workdir import fs  # noqa: E402

MAX_CAPTIONS = 12   # rows (or panels) per picture, spread over the table
PER_CAPTION = 10    # images per row


def save(samples, ids, texts, path: str, title: str = '', real=None):
  """`samples` [N, ...] drawn for caption rows `ids` [N]; `texts` the
  caption table's texts. Points: one scatter per caption over the data in
  grey; images: a row of PER_CAPTION samples per caption."""
  samples, ids = np.asarray(samples), np.asarray(ids)
  drawn = list(dict.fromkeys(ids.tolist()))
  # Spread over the table: its neighbouring rows often differ in one word.
  shown = drawn[::-(-len(drawn) // MAX_CAPTIONS)][:MAX_CAPTIONS]
  if samples.ndim == 2:
    fig = _points(samples, ids, shown, texts, real)
  else:
    fig = _images(samples, ids, shown, texts)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _points(samples, ids, shown, texts, real):
  ncol = min(len(shown), 4)
  nrow = -(-len(shown) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(2.8 * ncol, 2.9 * nrow),
                           squeeze=False)
  for ax in axes.flat[len(shown):]:
    ax.axis('off')
  lim = np.abs(samples[np.isfinite(samples).all(1)]).max(initial=3.0)
  for ax, c in zip(axes.flat, shown):
    if real is not None:
      ax.scatter(real[:, 0], real[:, 1], s=1, c='lightgray')
    s = samples[ids == c]
    ax.scatter(s[:, 0], s[:, 1], s=1, c='tab:blue', alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect('equal')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_short(texts[c]), fontsize=8)
  return fig


def _images(samples, ids, shown, texts):
  fig, axes = plt.subplots(len(shown), 1, squeeze=False,
                           figsize=(PER_CAPTION * 0.55 + 2.5,
                                    0.62 * len(shown) + 0.4))
  for ax, c in zip(axes[:, 0], shown):
    row = samples[ids == c][:PER_CAPTION]
    ax.imshow(image_grid(row, ncol=PER_CAPTION), cmap='gray', vmin=0,
              vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
      side.set_visible(False)
    ax.set_ylabel(_short(texts[c]), rotation=0, ha='right', va='center',
                  fontsize=8)
  return fig


def _short(text: str, n: int = 40) -> str:
  return text if len(text) <= n else text[:n - 1] + '…'


def for_entry(dataset, conditions, first, workdir: str, stem: str,
              title: str, real=None):
  """Writes W/captions_<stem>.png for a captioned dataset's entry (its
  first seed's samples `first`, drawn over `conditions`) and returns
  (title, file name); None for other datasets."""
  if dataset.captions is None or not getattr(conditions, 'num', 0):
    return None
  ids = conditions.ids_for(len(first))
  texts = [dataset.captions.text(i) for i in range(len(dataset.captions))]
  fname = f'captions_{stem}.png'
  save(first, ids, texts, os.path.join(workdir, fname),
       f'{title}, one {"row" if np.ndim(first) > 2 else "panel"} per caption',
       real)
  return f'{title} per caption', fname
