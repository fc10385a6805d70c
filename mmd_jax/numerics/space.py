"""The space the diffusion models live in.

A data-space run uses `IDENTITY`. A latent run uses an autoencoder's
latents: the method that trains it (the VAE) publishes a `LatentSpace` as
the 'space' artifact. The runner re-reads the data through the space
(`encode_dataset`), and everything that scores, previews or writes samples
maps them back with `decode`; nothing branches on which space it is.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from mmd_jax.run.checks import ConfigError
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
  encodes and decodes nothing.
  """
  name: str                  # appended to the dataset name, e.g. 'vae10'
  latent_dim: int
  encoder: Callable
  decoder: Callable
  params: Any = None
  scale: float = 1.0

  def encode(self, x, batch_size: int = 1000) -> np.ndarray:
    return _batched(self.encoder, self.params, x, batch_size) * self.scale

  def decode(self, latents, batch_size: int = 1000) -> np.ndarray:
    z = np.asarray(latents, np.float32) / self.scale
    return _batched(self.decoder, self.params, z, batch_size)

  def encode_dataset(self, data):
    """The data as the diffusion models see it: (N, latent_dim) points with
    the same labels and split."""
    name = f'{data.name}/{self.name}'
    if isinstance(data, DataShape):
      return DataShape(name, 'points', (self.latent_dim,), data.num_classes,
                       data.caption_signature)
    if not isinstance(data.train, dict):
      raise ConfigError('config.latent: latent diffusion needs in-memory data '
                        f'(digits, points); {data.name} is streamed')

    def enc(split):
      if split is None:
        return None
      out = {'x': self.encode(split['x']).astype(np.float32)}
      for k in ('label', 'caption_id'):
        if k in split:
          out[k] = split[k]
      return out
    return Dataset(name, 'points', enc(data.train), enc(data.test),
                   num_classes=data.num_classes, captions=data.captions)
