"""k-NN precision and recall (Kynkäänniemi et al. 2019) in any feature space."""
from __future__ import annotations

import numpy as np


def _pairwise_sq(a, b):
  return np.maximum(
      (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


# Rows per block: distances are computed block by block so that 10k-50k
# Inception features never need an (n, n) matrix in memory.
_BLOCK = 1024


def _radii(f, k):
  out = []
  for i in range(0, len(f), _BLOCK):
    d = _pairwise_sq(f[i:i + _BLOCK], f)
    # k+1: each point is its own nearest neighbour at distance 0.
    out.append(np.sqrt(np.partition(d, k, axis=1)[:, k]))
  return np.concatenate(out)


def _coverage(query, support, radii):
  inside = []
  for i in range(0, len(query), _BLOCK):
    d = np.sqrt(_pairwise_sq(query[i:i + _BLOCK], support))
    inside.append(np.any(d <= radii[None, :], axis=1))
  return float(np.mean(np.concatenate(inside)))


def precision_recall(real, fake, k: int = 3) -> dict:
  """Precision: fake samples inside the real manifold; recall: vice versa."""
  real = np.asarray(real, np.float64).reshape(len(real), -1)
  fake = np.asarray(fake, np.float64).reshape(len(fake), -1)
  return {'precision': _coverage(fake, real, _radii(real, k)),
          'recall': _coverage(real, fake, _radii(fake, k))}
