"""Real data that a scorer compares samples with, where no feature
network applies: per-caption reference sets, and the Frechet distance of
raw arrays (images or latents from a data file)."""
from __future__ import annotations

import numpy as np

from mmd_jax.evaluation import fid

# Arrays wider than this are projected to this many dimensions (a fixed
# Gaussian projection) before their Gaussian statistics are compared: a
# 64x64x4 latent has 16k values, whose covariance would not fit.
RAW_DIMS = 256


def fd_raw(samples, real) -> float:
  """The Frechet distance between the Gaussians fitted to the flattened
  arrays (after the fixed projection when wider than RAW_DIMS). Cheap
  and generic, not a perceptual metric: it compares means and covariances
  of the values themselves. NaN if any sample is not finite."""
  a = np.asarray(samples, np.float64).reshape(len(samples), -1)
  b = np.asarray(real, np.float64).reshape(len(real), -1)
  if not np.all(np.isfinite(a)):
    return float('nan')
  if a.shape[1] > RAW_DIMS:
    proj = np.random.default_rng(0).standard_normal(
        (a.shape[1], RAW_DIMS)) / np.sqrt(a.shape[1])
    a, b = a @ proj, b @ proj
  return float(fid.frechet_distance_features(a, b))


def subset(x, n: int, seed: int):
  """At most n rows of x, drawn without replacement (captions mixed)."""
  rng = np.random.default_rng([seed, 7921])
  return x[rng.permutation(len(x))[:n]]


def caption_references(dataset, n: int, seed: int):
  """(a real set scored as the reference row, its caption ids, one set
  per caption that samples are scored against): exact conditional samples
  where the captions' modes are known, else two disjoint halves of the
  data."""
  rng = np.random.default_rng([seed, 7920])
  k = len(dataset.captions)
  if dataset.captioned is not None:
    per = max(n // k, 2)
    refs = [dataset.captioned.conditional(c).sample(rng, per)
            for c in range(k)]
    real_a, ids_a = dataset.captioned.sample(rng, n)
    return real_a, ids_a, refs
  x, ids = dataset.train['x'], dataset.train['caption_id']
  perm = rng.permutation(len(x))
  half = len(x) // 2
  a, b = perm[:half], perm[half:]
  refs = [x[b][ids[b] == c] for c in range(k)]
  return x[a][:n], ids[a][:n], refs
