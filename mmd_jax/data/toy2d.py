"""Named 2-D Gaussian mixtures with known modes (so mode metrics are exact)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Mixture:
  means: np.ndarray    # (M, 2)
  stds: np.ndarray     # (M,)
  weights: np.ndarray  # (M,), sums to 1

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    comp = rng.choice(len(self.weights), size=n, p=self.weights)
    noise = rng.standard_normal((n, 2))
    return (self.means[comp] + self.stds[comp, None] * noise).astype(np.float32)


def _circle(m: int, radius: float) -> np.ndarray:
  ang = 2 * np.pi * np.arange(m) / m
  return radius * np.stack([np.cos(ang), np.sin(ang)], axis=-1)


def _mixture(means, std, weights=None) -> Mixture:
  means = np.asarray(means, np.float64)
  m = len(means)
  weights = np.full(m, 1.0 / m) if weights is None else np.asarray(weights)
  return Mixture(means, np.full(m, std), weights / weights.sum())


def get_mixture(name: str) -> Mixture:
  if name == 'asymmetric_mixture':
    # docs/ALGORITHMS.md §6: unequal weights make mode-dropping visible.
    return _mixture(_circle(6, 2.0), 0.1, (.35, .25, .15, .12, .08, .05))
  if name == 'imbalanced8':
    # 8 modes 15 stds apart with weights spanning 80x (geometric): where a
    # mode-seeking objective must under-weight the rare ones (docs/where_emd_should_win.md).
    return _mixture(_circle(8, 2.0), 0.1, 80.0 ** (-np.arange(8) / 7.0))
  if name == 'ring8':
    return _mixture(_circle(8, 2.0), 0.1)
  if name == 'grid9':
    g = np.array([-2.0, 0.0, 2.0])
    return _mixture(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), 0.15)
  if name == 'two_scales':
    # A tight mode next to a broad one: hard for few-step samplers.
    return Mixture(np.array([[-1.5, 0.0], [1.5, 0.0]]), np.array([0.05, 0.5]),
                   np.array([0.5, 0.5]))
  raise ValueError(f'unknown toy2d distribution {name!r}; '
                   f'choose one of {TOY2D_NAMES}')


TOY2D_NAMES = ('asymmetric_mixture', 'imbalanced8', 'ring8', 'grid9',
               'two_scales')
