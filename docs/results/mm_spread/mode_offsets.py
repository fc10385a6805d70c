"""Per-mode statistics of toy2d stages: each sample goes to its nearest
mode of the asymmetric mixture; prints, per mode, the fraction of samples,
their std around the mode's centre (data: 0.1) and the radial offset of
their mean (negative: pulled towards the origin).

  python docs/results/mm_spread/mode_offsets.py W/mm_alternating_k8 \
      W/mm_alternating_k8_seed1 ...
"""
import sys

import numpy as np

from mmd_jax import sample
from mmd_jax.data.toy2d import get_mixture


def mode_stats(x, mix):
  nearest = np.linalg.norm(x[:, None] - mix.means[None], axis=-1).argmin(1)
  out = []
  for j, centre in enumerate(mix.means):
    d = x[nearest == j] - centre
    radial = centre / np.linalg.norm(centre)
    out.append((len(d) / len(x), float(d.std()), float(d.mean(0) @ radial)))
  return out


def main(stages):
  mix = get_mixture('asymmetric_mixture')
  print('weights', mix.weights, 'stds', mix.stds)
  for stage in stages:
    x, _, _ = sample.draw(stage, None, 16_000, seed=5)
    cells = ', '.join(f'{w:.3f}/{s:.3f}/{r:+.3f}'
                      for w, s, r in mode_stats(x, mix))
    print(f'{stage}: fraction/std/radial offset per mode: {cells}')


if __name__ == '__main__':
  main(sys.argv[1:])
