"""Conditioning shared by every architecture: noise level, and a class
label or a caption (numerics/condition.py)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.numerics.condition import masked_mean


def logsnr_features(lam, dim: int, max_freq: float = 200.0):
  """Sinusoidal features of the log-SNR (scaled to roughly [-2, 2])."""
  c = jnp.asarray(lam, jnp.float32) / 8.0
  half = dim // 2
  freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_freq), half))
  args = c[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def is_caption(cond) -> bool:
  return isinstance(cond, dict)


def caption_vector(cond):
  """A caption's sentence vector: the encoder's pooled output where the
  table has one, else the masked mean of its token embeddings."""
  if 'pooled' in cond:
    return cond['pooled'].astype(jnp.float32)
  return masked_mean(cond['emb'].astype(jnp.float32), cond['mask'])


class Conditioning(nn.Module):
  """Embeds (lam, label) into one vector. Label `num_classes` means 'none'.
  A caption (a dict) adds a projection of its sentence vector."""
  dim: int
  num_classes: int = 0

  @nn.compact
  def __call__(self, lam, labels=None):
    # At least float32 (float32 features, no module dtype) at full matmul
    # precision, whatever the model's dtype and config.matmul_precision:
    # low-precision noise-level embeddings are a known source of gradient
    # spikes in continuous-time distillation, and these two layers cost
    # nothing beside the network.
    dense = lambda: nn.Dense(self.dim, precision=jax.lax.Precision.HIGHEST)
    emb = logsnr_features(lam, 128)
    emb = dense()(emb)
    emb = dense()(nn.silu(emb))
    if is_caption(labels):
      return emb + nn.Dense(self.dim, name='caption')(caption_vector(labels))
    if self.num_classes > 0:
      if labels is None:
        labels = jnp.full(lam.shape, self.num_classes, jnp.int32)
      # One extra row: the null label used for classifier-free guidance.
      emb = emb + nn.Embed(self.num_classes + 1, self.dim)(labels)
    return emb
