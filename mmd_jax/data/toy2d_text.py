"""The captioned 2-D benchmark: 8 modes on a ring, and captions that name
subsets of them ("left", "upper right", ...). Each example draws a caption
uniformly, then a mode the caption allows, so p(x | caption) is the ring
restricted to the allowed modes: exact conditional samples, an exact
conditional teacher, and an exact caption accuracy."""
from __future__ import annotations

import dataclasses

import numpy as np

from mmd_jax.data import toy2d

CAPTIONS = ('left', 'right', 'upper', 'lower', 'upper left', 'upper right',
            'lower left', 'lower right')


def _allowed(caption: str, means: np.ndarray) -> np.ndarray:
  ok = np.ones(len(means), bool)
  for word in caption.split():
    ok &= {'left': means[:, 0] < 0, 'right': means[:, 0] > 0,
           'upper': means[:, 1] > 0, 'lower': means[:, 1] < 0}[word]
  return ok


@dataclasses.dataclass(frozen=True)
class CaptionedMixture:
  mixture: toy2d.Mixture
  allowed: np.ndarray        # [K, M] bool: which modes caption k names
  captions: tuple

  def conditional(self, k: int) -> toy2d.Mixture:
    w = np.where(self.allowed[k], self.mixture.weights, 0.0)
    return toy2d.Mixture(self.mixture.means, self.mixture.stds, w / w.sum())

  def sample(self, rng, n: int):
    """(x [n, 2], caption_id [n])."""
    ids = rng.integers(0, len(self.captions), n)
    x = np.empty((n, 2), np.float32)
    for k in range(len(self.captions)):
      sel = ids == k
      x[sel] = self.conditional(k).sample(rng, int(sel.sum()))
    return x, ids


def ring8_captioned() -> CaptionedMixture:
  # Rotated by half a step, so no mode sits on an axis: every caption word
  # splits the ring into two halves of 4 modes.
  ang = 2 * np.pi * (np.arange(8) + 0.5) / 8
  means = 2.0 * np.stack([np.cos(ang), np.sin(ang)], axis=-1)
  mix = toy2d.Mixture(means, np.full(8, 0.1), np.full(8, 1 / 8))
  return CaptionedMixture(
      mix, np.stack([_allowed(c, means) for c in CAPTIONS]), CAPTIONS)


def table():
  """The benchmark's caption table, from the deterministic encoder."""
  # Imported here: `python -m mmd_jax.data.text_encoder` runs it as a
  # script, which must not be imported with the package first.
  from mmd_jax.data import text_encoder
  return text_encoder.encode(CAPTIONS)
