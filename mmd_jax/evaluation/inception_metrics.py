"""FID, Inception Score and precision/recall in Inception space, for image
data. Inference is data-parallel over the mesh; the FID statistics are
reduced on device in float64 (`fid.FeatureStats`)."""
from __future__ import annotations

import hashlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mmd_jax.workdir import fs
from mmd_jax.device import parallel
from mmd_jax.evaluation import fid, inception, precision_recall


def to_inception_input(images):
  """(N, H, W, C), C in {1, 3}: uint8 in [0, 255] or data-space floats in
  [-1, 1] -> [0, 1] RGB."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32) / 255.0
  else:
    x = (images.astype(jnp.float32) + 1.0) / 2.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return jnp.clip(x, 0.0, 1.0)


class InceptionMetrics:
  """Pool features (2048) and logits (1008) of data-space images."""

  def __init__(self, weights_path: str, mesh, batch_size: int = 200):
    self.params = inception.load_params(weights_path)
    self.weights_path = weights_path
    self.mesh = mesh
    n_dev = mesh.devices.size
    self.batch_size = max(n_dev, batch_size // n_dev * n_dev)
    # Two programs: the resize depends on the image size, the network (on
    # 299x299 inputs) does not, so it compiles once for every dataset.
    net = inception.InceptionV3(resize=False)
    batch = parallel.batch_sharding(mesh)
    self._prep = jax.jit(
        lambda x: inception.resize_input(to_inception_input(x)),
        in_shardings=batch, out_shardings=batch)
    net_apply = jax.jit(net.apply, in_shardings=(parallel.replicated(mesh),
                                                 batch), out_shardings=batch)
    self._apply = lambda p, x: net_apply(p, self._prep(x))

  def run(self, images, want_features: bool = True):
    """-> (FeatureStats of the pool features, host features or None, host
    logits). `images` is an array or anything sliceable with a length
    (data.images.LazyImages). Each process passes the same full set;
    batches are padded to the mesh and padding rows are masked out of the
    statistics."""
    n = len(images)
    stats = fid.FeatureStats(2048)
    feats, logits = [], []
    t0, last = time.time(), time.time()
    bs = self.batch_size
    for i in range(0, n, bs):
      chunk = np.asarray(images[i:i + bs])
      valid = len(chunk)
      if valid < bs:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - valid, 0)])
      x = jax.device_put(chunk, parallel.batch_sharding(self.mesh))
      f, lg = self._apply(self.params, x)
      stats.update(f, valid)
      lg = _to_host(lg)[:valid]
      logits.append(lg)
      if want_features:
        feats.append(_to_host(f)[:valid])
      if time.time() - last > 30 and i + bs < n:
        rate = (i + bs) / (time.time() - t0)
        logging.info('  inception %d/%d | %.1f images/s', i + bs, n, rate)
        last = time.time()
    return (stats, np.concatenate(feats) if want_features else None,
            np.concatenate(logits))


def _to_host(x):
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def reference_stats(metrics: InceptionMetrics, cache_dir: str, name: str,
                    images=None, npz_path: str = ''):
  """(mu, sigma, features or None) of the reference set: an ADM-format .npz
  when given, else computed from `images` and cached in `cache_dir` (keyed
  by the dataset name, image count and weights file)."""
  if npz_path:
    mu, sigma = fid.load_stats(npz_path)
    return mu, sigma, None
  tag = hashlib.sha1(f'{name}|{len(images)}|{fs.absolute(metrics.weights_path)}'
                     .encode()).hexdigest()[:10]
  path = os.path.join(cache_dir, f'inception_ref_{tag}.npz')
  if fs.exists(path):
    f = fs.load_npz(path)
    return f['mu'], f['sigma'], f['features']
  stats, feats, _ = metrics.run(images)
  mu, sigma = stats.mean_cov()
  if jax.process_index() == 0:
    fs.makedirs(cache_dir)
    fid.save_stats(path, mu, sigma, features=feats.astype(np.float32))
  return mu, sigma, feats


def score(metrics: InceptionMetrics, samples, ref, pr_k: int = 3,
          pr_num_samples: int = 10_000) -> dict:
  """fid, inception_score and (when reference features exist) k-NN
  precision/recall on equal-size sets of at most `pr_num_samples`."""
  mu_r, sigma_r, feats_r = ref
  stats, feats, logits = metrics.run(samples, want_features=feats_r is not None)
  mu, sigma = stats.mean_cov()
  out = {'fid': fid.frechet_distance(mu, sigma, mu_r, sigma_r),
         'inception_score': fid.inception_score(logits)[0]}
  if feats_r is not None:
    m = min(len(feats), len(feats_r), pr_num_samples)
    rng = np.random.default_rng(0)
    out.update(precision_recall.precision_recall(
        feats_r[rng.permutation(len(feats_r))[:m]],
        feats[rng.permutation(len(feats))[:m]], pr_k))
  return out
