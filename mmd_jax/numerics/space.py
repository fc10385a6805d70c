"""The space the diffusion models live in.

A data-space run uses `IDENTITY`. A latent run uses an autoencoder's
latents: the method that trains it (the VAE) publishes a `LatentSpace` as
the 'space' artifact. The runner re-reads the data through the space
(`encode_dataset`), and everything that scores, previews or writes samples
maps them back with `decode`; nothing branches on which space it is.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Callable

import jax
import numpy as np

from mmd_jax.run.checks import ConfigError
from mmd_jax.workdir import fs
from mmd_jax.data import Dataset, DataShape


class IdentitySpace:
  """The data themselves."""

  def encode_dataset(self, data):
    return data

  def decode(self, samples):
    return samples


IDENTITY = IdentitySpace()


def _batched(fn, params, x, batch_size: int) -> np.ndarray:
  import jax.numpy as jnp
  return np.concatenate([np.asarray(fn(params, jnp.asarray(
      x[i:i + batch_size]))) for i in range(0, len(x), batch_size)])


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """latent = scale * encoder(x); data = decoder(latent / scale).

  `encoder`/`decoder` are jitted `(params, batch) -> batch`. With
  `params=None` the space is abstract: it maps a DataShape (describe) but
  encodes and decodes nothing. `latent_shape` (H, W, C): image latents
  (a diffusers VAE's), trained on as 'arrays'; empty: flat points.
  `cache_dir`: the encoded splits are kept there and read back while the
  data are the same (a large autoencoder encodes a dataset once).
  `batch_size`: rows per encoder or decoder call.
  """
  name: str                  # appended to the dataset name, e.g. 'vae10'
  latent_dim: int
  encoder: Callable
  decoder: Callable
  params: Any = None
  scale: float = 1.0
  latent_shape: tuple = ()
  cache_dir: str = ''
  batch_size: int = 1000

  def encode(self, x) -> np.ndarray:
    return _batched(self.encoder, self.params, x, self.batch_size) * self.scale

  def decode(self, latents) -> np.ndarray:
    z = np.asarray(latents, np.float32) / self.scale
    return _batched(self.decoder, self.params, z, self.batch_size)

  def _kind_and_shape(self):
    if self.latent_shape:
      return 'arrays', tuple(self.latent_shape)
    return 'points', (self.latent_dim,)

  def _encode_cached(self, x) -> np.ndarray:
    if not self.cache_dir:
      return self.encode(x)
    # The data's bytes name the file: other data (another split, a changed
    # file) are encoded afresh, never read from a stale cache.
    x = np.ascontiguousarray(x)
    key = f'{zlib.crc32(x.tobytes()):08x}_{len(x)}'
    path = os.path.join(self.cache_dir, f'latents_{key}.npz')
    if fs.isfile(path):
      return fs.load_npz(path)['z']
    z = self.encode(x)
    if jax.process_index() == 0:
      fs.save_npz(path, z=z)
    return z

  def encode_dataset(self, data):
    """The data as the diffusion models see it: (N, latent_dim) points, or
    (N, H, W, C) arrays for image latents, with the same labels and
    split."""
    name = f'{data.name}/{self.name}'
    kind, shape = self._kind_and_shape()
    if isinstance(data, DataShape):
      return DataShape(name, kind, shape, data.num_classes,
                       data.caption_signature)
    if not isinstance(data.train, dict):
      raise ConfigError('config.latent: latent diffusion needs in-memory data '
                        f'(digits, points); {data.name} is streamed')

    def enc(split):
      if split is None:
        return None
      out = {'x': self._encode_cached(split['x']).astype(np.float32)}
      for k in ('label', 'caption_id'):
        if k in split:
          out[k] = split[k]
      return out
    return Dataset(name, kind, enc(data.train), enc(data.test),
                   num_classes=data.num_classes, captions=data.captions)
