"""Captioned digits: each 8x8 digit's caption names its class and, where the
image is in an extreme tertile, its ink mass ("light", "bold") and slant
("leaning left", "leaning right"), e.g. "bold three leaning right". Both
attributes are exact functions of the pixels, so caption accuracy is exact
for them; the class is read by the project's digits classifier.
"""
from __future__ import annotations

import dataclasses

import numpy as np


DIGITS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
          'eight', 'nine')
INK = {0: 'light', 2: 'bold'}
SLANT = {0: 'leaning left', 2: 'leaning right'}
NOT_NAMED = 1   # the middle tertile: the caption says nothing


def ink_mass(x) -> np.ndarray:
  """Total ink of images in [-1, 1] (N, 8, 8, 1)."""
  x = np.asarray(x, np.float64).reshape(len(x), 8, 8)
  return np.sum((x + 1.0) / 2.0, axis=(1, 2))


def slant(x) -> np.ndarray:
  """Ink-weighted regression slope of column on height: > 0 when the top of
  the digit sits to the right of its bottom."""
  x = np.clip(np.asarray(x, np.float64).reshape(len(x), 8, 8), -1.0, 1.0)
  w = (x + 1.0) / 2.0 + 1e-9
  rows, cols = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing='ij')
  height = -rows
  total = w.sum((1, 2))
  mh = (w * height).sum((1, 2)) / total
  mc = (w * cols).sum((1, 2)) / total
  cov = (w * (height - mh[:, None, None]) * (cols - mc[:, None, None])).sum(
      (1, 2)) / total
  var = (w * (height - mh[:, None, None]) ** 2).sum((1, 2)) / total
  return cov / var


@dataclasses.dataclass(frozen=True)
class CaptionedDigits:
  """Thresholds (tertiles of the training images) and, per caption, the
  class, ink tertile and slant tertile it names (NOT_NAMED: none)."""
  ink_edges: tuple
  slant_edges: tuple
  named: np.ndarray        # [K, 3] int: class, ink tertile, slant tertile
  captions: tuple

  def tertiles(self, x):
    """(ink tertile, slant tertile) of images x, each in {0, 1, 2}."""
    return (np.digitize(ink_mass(x), self.ink_edges),
            np.digitize(slant(x), self.slant_edges))

  def caption_ids(self, x, labels) -> np.ndarray:
    ink, sl = self.tertiles(x)
    key = {tuple(r): i for i, r in enumerate(self.named.tolist())}
    return np.array([key[(int(c), int(a), int(b))]
                     for c, a, b in zip(labels, ink, sl)], np.int64)

  def accuracy(self, x, caption_ids, predicted_class) -> dict:
    """Per-attribute and joint caption accuracy of samples x: each named
    attribute right (the class by `predicted_class`), and all of them."""
    named = self.named[np.asarray(caption_ids)]
    ink, sl = self.tertiles(x)
    cls_ok = np.asarray(predicted_class) == named[:, 0]
    ink_named, sl_named = named[:, 1] != NOT_NAMED, named[:, 2] != NOT_NAMED
    ink_ok, sl_ok = ink == named[:, 1], sl == named[:, 2]
    joint = cls_ok & (ink_ok | ~ink_named) & (sl_ok | ~sl_named)
    mean = lambda ok, sel: float(np.mean(ok[sel])) if np.any(sel) else \
        float('nan')
    return {'caption_class_accuracy': float(np.mean(cls_ok)),
            'caption_ink_accuracy': mean(ink_ok, ink_named),
            'caption_slant_accuracy': mean(sl_ok, sl_named),
            'caption_joint_accuracy': float(np.mean(joint))}


def _caption(c: int, ink: int, sl: int) -> str:
  return ' '.join(w for w in (INK.get(ink), DIGITS[c], SLANT.get(sl)) if w)


def build(x_train) -> CaptionedDigits:
  """Every (class, ink, slant) caption, with tertiles of `x_train`."""
  edges = lambda v: tuple(float(e) for e in np.quantile(v, [1 / 3, 2 / 3]))
  named = np.array([(c, a, b) for c in range(10) for a in range(3)
                    for b in range(3)], np.int64)
  return CaptionedDigits(edges(ink_mass(x_train)), edges(slant(x_train)),
                         named, tuple(_caption(*r) for r in named))


def table(captioned: CaptionedDigits) -> dict:
  # Imported here: `python -m mmd_jax.data.text_encoder` runs it as a
  # script, which must not be imported with the package first.
  from mmd_jax.data import text_encoder
  return text_encoder.encode(captioned.captions)
