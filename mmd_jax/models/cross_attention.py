"""Cross-attention from image (or point) tokens to a caption's tokens.

The caption's mask says which tokens are real; a caption with no real token
(a fully masked row) contributes nothing, rather than the NaN of a softmax
over nothing or the uniform average a large negative bias would give.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmd_jax.models.layers import attention_fn


class CrossAttention(nn.Module):
  num_heads: int = 1

  @nn.compact
  def __call__(self, x, cond):
    """x: [B, N, C] tokens; cond: {'emb': [B, L, D], 'mask': [B, L]}."""
    keep = cond['mask'] > 0
    h = nn.LayerNorm()(x)
    out = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, attention_fn=attention_fn,
        out_kernel_init=nn.initializers.zeros)(
            h, cond['emb'].astype(h.dtype), mask=keep[:, None, None, :])
    return x + out * jnp.any(keep, axis=-1)[:, None, None].astype(out.dtype)
