"""Fréchet distance between Gaussians fitted to features (FID and friends)."""
from __future__ import annotations

import numpy as np
import scipy.linalg


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
