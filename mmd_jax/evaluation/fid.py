"""Fréchet distance between Gaussians fitted to features (FID and friends)."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from mmd_jax.workdir import fs


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(features, np.float64).reshape(len(features), -1)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

  Using the symmetric form sqrt(S1) S2 sqrt(S1), whose eigenvalues are real
  and >= 0 up to round-off, avoids sqrtm of the non-symmetric S1 S2 and its
  complex round-off on near-singular covariances.
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  s1 = np.atleast_2d(sigma1).astype(np.float64)
  s2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f'shape mismatch: {mu1.shape} {s1.shape} vs '
                     f'{mu2.shape} {s2.shape}')
  w1, v1 = scipy.linalg.eigh((s1 + s1.T) / 2)
  root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
  m = root1 @ s2 @ root1
  w = scipy.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = np.sum(np.sqrt(np.clip(w, 0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_features(f1, f2) -> float:
  return frechet_distance(*feature_stats(f1), *feature_stats(f2))


# ----------------------------------------------------------------------------
# Statistics accumulated on device, in float64, over a sharded batch.


class FeatureStats:
  """Running count, sum and sum of outer products of features, in float64.

  `update` takes a global (N, D) array (sharded over the mesh's batch axes
  across every device and process, or a host array); the reductions run
  under jit in float64, so the result does not depend on the device count
  beyond float64 round-off. `mean_cov` returns (mu, sigma) as numpy.
  """

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self.total = np.zeros((dim,), np.float64)
    self.outer = np.zeros((dim, dim), np.float64)

  def update(self, features, valid: int | None = None):
    """Adds the first `valid` rows of `features` (all rows by default):
    padding rows of a last, partial batch are masked out, not sliced, so the
    sharded array is never gathered."""
    n = features.shape[0]
    valid = n if valid is None else int(valid)
    with jax.enable_x64(True):
      s, o = _sums(features, jnp.asarray(valid, jnp.int64))
      self.total += np.asarray(s)
      self.outer += np.asarray(o)
    self.count += valid

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f'need at least 2 feature vectors, got {self.count}')
    mu = self.total / self.count
    cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
    return mu, cov


@jax.jit
def _sums(features, valid):
  """Sum and sum of outer products of the first `valid` rows (call under
  jax.enable_x64 so that both are float64)."""
  f = features.reshape(features.shape[0], -1).astype(jnp.float64)
  mask = (jnp.arange(f.shape[0]) < valid).astype(jnp.float64)[:, None]
  f = f * mask
  return jnp.sum(f, axis=0), jnp.matmul(f.T, f,
                                        precision=jax.lax.Precision.HIGHEST)


def save_stats(path: str, mu, sigma, **extra):
  """ADM's reference-batch layout: `mu`, `sigma` (plus what else is given)."""
  fs.save_npz(path, mu=mu, sigma=sigma, **extra)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an ADM-format .npz (keys `mu`, `sigma`)."""
  f = fs.load_npz(path)
  missing = [k for k in ('mu', 'sigma') if k not in f]
  if missing:
    raise ValueError(f'{path}: reference statistics need keys mu and sigma; '
                     f'missing {missing} (found {sorted(f)})')
  return f['mu'].astype(np.float64), f['sigma'].astype(np.float64)


# ----------------------------------------------------------------------------
# Inception Score.


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) per split; returns (mean, std) over splits,
  as in Salimans et al. 2016 and the standard implementations."""
  logits = np.asarray(logits, np.float64)
  splits = max(1, min(splits, len(logits)))  # no empty splits on tiny sets
  logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  p = np.exp(logp)
  scores = []
  for part_logp, part_p in zip(np.array_split(logp, splits),
                               np.array_split(p, splits)):
    log_py = np.log(np.mean(part_p, axis=0))
    kl = np.sum(part_p * (part_logp - log_py[None, :]), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))
