"""Sample-based metrics for low-dimensional data.

Energy distance and MMD use the plug-in (V-statistic) estimator: it is >= 0,
and its small-sample bias is the same for the model rows and the real-vs-real
`reference` row, which is what makes that row a noise floor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _mean_pairwise(a, b, fn, chunk=2048):
  total = 0.0
  for i in range(0, len(a), chunk):
    total += float(_block(a[i:i + chunk], b, fn))
  return total / (len(a) * len(b))


def _block(a, b, fn):
  d2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
  return jnp.sum(fn(d2))


_dist = jax.jit(lambda a, b: _block(a, b, lambda d2: jnp.sqrt(d2 + 1e-30)))


def energy_distance(x, y) -> float:
  """2 E|X-Y| - E|X-X'| - E|Y-Y'| (plug-in estimate)."""
  x = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
  y = jnp.asarray(y, jnp.float32).reshape(len(y), -1)

  def mean_dist(a, b):
    tot = 0.0
    for i in range(0, len(a), 2048):
      tot += float(_dist(a[i:i + 2048], b))
    return tot / (len(a) * len(b))

  return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def mmd_rbf(x, y, bandwidths=(0.1, 0.3, 1.0)) -> float:
  """Squared MMD with a sum of RBF kernels exp(-|a-b|^2 / (2 h^2))."""
  x = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
  y = jnp.asarray(y, jnp.float32).reshape(len(y), -1)
  hs = jnp.asarray(bandwidths, jnp.float32)

  @jax.jit
  def kern_sum(a, b):
    d2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
    return jnp.sum(jnp.exp(-d2[..., None] / (2 * hs**2)))

  def mean_k(a, b):
    tot = 0.0
    for i in range(0, len(a), 2048):
      tot += float(kern_sum(a[i:i + 2048], b))
    return tot / (len(a) * len(b))

  return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def mode_stats(samples, mixture, radius_stds: float = 4.0) -> dict:
  """Mode weights, coverage and how much mass sits near any mode.

  A sample belongs to its nearest mode if it lies within `radius_stds`
  standard deviations of it. A mode is covered when it holds at least 20%
  of its expected share of the samples.
  """
  s = np.asarray(samples, np.float64).reshape(len(samples), -1)
  d = np.linalg.norm(s[:, None, :] - mixture.means[None], axis=-1)
  nearest = np.argmin(d, axis=1)
  near = d[np.arange(len(s)), nearest] <= radius_stds * mixture.stds[nearest]
  counts = np.bincount(nearest[near], minlength=len(mixture.weights))
  n_near = max(int(near.sum()), 1)
  weights = counts / n_near
  covered = counts >= 0.2 * mixture.weights * len(s)
  return {
      'mode_weight_error': float(np.max(np.abs(weights - mixture.weights))),
      'mode_coverage': float(np.mean(covered)),
      'near_mode_fraction': float(near.mean()),
  }


def toy_metrics(samples, real, mixture=None, bandwidths=(0.1, 0.3, 1.0)):
  out = {'energy_distance': energy_distance(samples, real),
         'mmd': mmd_rbf(samples, real, bandwidths)}
  if mixture is not None:
    out.update(mode_stats(samples, mixture))
  return out
