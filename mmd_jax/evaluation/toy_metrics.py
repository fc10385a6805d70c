"""Sample-based metrics for low-dimensional data.

Energy distance and MMD use the plug-in (V-statistic) estimator: it is >= 0,
and its small-sample bias is the same for the model rows and the real-vs-real
`reference` row, which is what makes that row a noise floor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _flat(x):
  return jnp.asarray(x, jnp.float32).reshape(len(x), -1)


@jax.jit
def _dist_sum(a, b):
  d2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
  return jnp.sum(jnp.sqrt(d2 + 1e-30))


def _mean_over_pairs(fn, a, b, chunk=2048):
  """Mean of fn over all (a_i, b_j) pairs, in row chunks to bound memory."""
  total = sum(float(fn(a[i:i + chunk], b)) for i in range(0, len(a), chunk))
  return total / (len(a) * len(b))


def energy_distance(x, y) -> float:
  """2 E|X-Y| - E|X-X'| - E|Y-Y'| (plug-in estimate)."""
  x, y = _flat(x), _flat(y)
  m = lambda a, b: _mean_over_pairs(_dist_sum, a, b)
  return 2 * m(x, y) - m(x, x) - m(y, y)


def mmd_rbf(x, y, bandwidths=(0.1, 0.3, 1.0)) -> float:
  """Squared MMD with a sum of RBF kernels exp(-|a-b|^2 / (2 h^2))."""
  x, y = _flat(x), _flat(y)
  hs = jnp.asarray(bandwidths, jnp.float32)

  @jax.jit
  def kern_sum(a, b):
    d2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
    return jnp.sum(jnp.exp(-d2[..., None] / (2 * hs**2)))

  m = lambda a, b: _mean_over_pairs(kern_sum, a, b)
  return m(x, x) + m(y, y) - 2 * m(x, y)


def mode_stats(samples, mixture, radius_stds: float = 4.0) -> dict:
  """Mode weights, coverage and how much mass sits near any mode, and the
  per-mode weight ratios' smallest and their worst case (farthest from 1
  in log: under- or over-weighted).

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
  ratios = mode_ratios(weights, mixture)
  return {
      'mode_weight_error': float(np.max(np.abs(weights - mixture.weights))),
      'mode_coverage': float(np.mean(covered)),
      'near_mode_fraction': float(near.mean()),
      'mode_ratio_min': float(np.min(ratios)),
      'worst_mode_ratio': float(ratios[np.argmax(np.abs(np.log(
          np.maximum(ratios, 1e-12))))]),
  }


def mode_ratios(weights, mixture) -> np.ndarray:
  """Sampled over true weight per mode: 1 is right, below 1 under-weighted
  (what a mode-seeking objective does to rare modes)."""
  return np.asarray(weights, np.float64) / mixture.weights


def toy_metrics(samples, real, mixture=None, bandwidths=(0.1, 0.3, 1.0)):
  out = {'energy_distance': energy_distance(samples, real),
         'mmd': mmd_rbf(samples, real, bandwidths)}
  if mixture is not None:
    out.update(mode_stats(samples, mixture))
  return out


def caption_metrics(samples, ids, references, captioned=None) -> dict:
  """Caption-conditioned samples: the energy distance to `references[k]`
  (exact conditional samples, or the data's examples of caption k) per
  caption, averaged over captions; and, where the modes each caption names
  are known (data.toy2d_text), caption accuracy: the fraction of samples
  within 4 standard deviations of a mode their caption allows."""
  s = np.asarray(samples, np.float64).reshape(len(samples), -1)
  ids = np.asarray(ids)
  eds = [energy_distance(s[ids == k], ref) for k, ref in enumerate(references)
         if np.sum(ids == k) >= 2 and len(ref) >= 2]
  out = {'caption_energy_distance': float(np.mean(eds)) if eds
         else float('nan')}
  if captioned is not None:
    mix = captioned.mixture
    d = np.linalg.norm(s[:, None, :] - mix.means[None], axis=-1)
    ok = (d <= 4.0 * mix.stds[None]) & captioned.allowed[ids]
    out['caption_accuracy'] = float(np.mean(ok.any(axis=-1)))
  return out
