"""VAE networks: a Gaussian encoder q(z|x) and a Bernoulli or Gaussian
decoder p(x|z), as MLPs (Kingma & Welling's, docs/ALGORITHMS.md §5) or small
convnets for images. One module holds both; `encode` and `decode` are its
methods, so `module.apply(params, x, method='encode')` reads either half.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

LIKELIHOODS = ('bernoulli', 'gaussian')
ARCHS = ('mlp', 'conv')


class MLPEncoder(nn.Module):
  hidden: int
  latent_dim: int

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)
    h = nn.tanh(nn.Dense(self.hidden)(h))
    h = nn.tanh(nn.Dense(self.hidden)(h))
    return nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)


class MLPDecoder(nn.Module):
  hidden: int
  out_shape: Sequence[int]

  @nn.compact
  def __call__(self, z):
    h = nn.tanh(nn.Dense(self.hidden)(z))
    h = nn.tanh(nn.Dense(self.hidden)(h))
    size = 1
    for d in self.out_shape:
      size *= d
    return nn.Dense(size)(h).reshape((z.shape[0],) + tuple(self.out_shape))


class ConvEncoder(nn.Module):
  channels: int
  latent_dim: int

  @nn.compact
  def __call__(self, x):
    h = nn.silu(nn.Conv(self.channels, (3, 3))(x))
    h = nn.silu(nn.Conv(2 * self.channels, (3, 3), strides=(2, 2))(h))
    h = nn.silu(nn.Conv(2 * self.channels, (3, 3))(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)


class ConvDecoder(nn.Module):
  channels: int
  out_shape: Sequence[int]   # (H, W, C), H and W even

  @nn.compact
  def __call__(self, z):
    hh, ww, c = self.out_shape
    h = nn.silu(nn.Dense((hh // 2) * (ww // 2) * 2 * self.channels)(z))
    h = h.reshape(z.shape[0], hh // 2, ww // 2, 2 * self.channels)
    h = nn.silu(nn.Conv(2 * self.channels, (3, 3))(h))
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
    return nn.Conv(c, (3, 3))(h)


class VAE(nn.Module):
  """Encoder returns (mean, log-variance) of q(z|x). The decoder returns
  Bernoulli logits, or the Gaussian mean; a Gaussian decoder's per-pixel
  log-scale is a learned parameter shared over examples."""
  example_shape: Sequence[int]
  latent_dim: int = 10
  arch: str = 'mlp'            # mlp | conv
  hidden: int = 500            # mlp width, or conv base channels
  likelihood: str = 'bernoulli'

  def setup(self):
    if self.arch == 'mlp':
      self.encoder = MLPEncoder(self.hidden, self.latent_dim)
      self.decoder = MLPDecoder(self.hidden, tuple(self.example_shape))
    elif self.arch == 'conv':
      self.encoder = ConvEncoder(self.hidden, self.latent_dim)
      self.decoder = ConvDecoder(self.hidden, tuple(self.example_shape))
    else:
      raise ValueError(f'unknown VAE arch {self.arch!r}')
    if self.likelihood == 'gaussian':
      self.log_scale = self.param('log_scale', nn.initializers.zeros,
                                  tuple(self.example_shape))

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    """(location, log_scale): logits and None (Bernoulli), or mean and the
    per-pixel log standard deviation (Gaussian)."""
    out = self.decoder(z)
    if self.likelihood == 'gaussian':
      return out, self.log_scale
    return out, None

  def __call__(self, x, z):
    return self.encode(x), self.decode(z)
