"""ADM/VDM-style UNet: residual blocks with scale-shift conditioning, attention
at chosen resolutions, dropout. Inputs are NHWC."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmd_jax.models.cross_attention import CrossAttention
from mmd_jax.models.embeddings import Conditioning, is_caption
from mmd_jax.models.layers import GroupNorm, attention_fn


def _groups(channels: int, max_groups: int = 32) -> int:
  g = min(max_groups, channels)
  while channels % g:
    g -= 1
  return g


class ResBlock(nn.Module):
  out_channels: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.silu(GroupNorm(_groups(x.shape[-1]))(x))
    h = nn.Conv(self.out_channels, (3, 3))(h)
    # Scale-shift conditioning (ADM's use_scale_shift_norm).
    scale, shift = jnp.split(nn.Dense(2 * self.out_channels)(emb), 2, axis=-1)
    h = GroupNorm(_groups(self.out_channels))(h)
    h = h * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_channels, (3, 3),
                kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1))(x)
    return x + h


class AttnBlock(nn.Module):
  """Self-attention; with a caption, then cross-attention to its tokens."""
  num_heads: int = 1

  @nn.compact
  def __call__(self, x, cond=None):
    b, hh, ww, c = x.shape
    h = GroupNorm(_groups(c))(x).reshape(b, hh * ww, c)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, attention_fn=attention_fn,
        out_kernel_init=nn.initializers.zeros)(h, h)
    x = x + h.reshape(b, hh, ww, c)
    if not is_caption(cond):
      return x
    t = CrossAttention(self.num_heads)(x.reshape(b, hh * ww, c), cond)
    return t.reshape(b, hh, ww, c)


class UNet(nn.Module):
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (4,)
  num_heads: int = 1
  dropout: float = 0.0
  num_classes: int = 0

  @nn.compact
  def __call__(self, z, lam, labels=None, train: bool = False):
    emb_dim = 4 * self.channels
    emb = nn.silu(Conditioning(emb_dim, self.num_classes)(lam, labels))
    h = nn.Conv(self.channels, (3, 3))(z)
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, self.dropout)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_heads)(h, labels)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
        skips.append(h)

    h = ResBlock(h.shape[-1], self.dropout)(h, emb, train)
    h = AttnBlock(self.num_heads)(h, labels)
    h = ResBlock(h.shape[-1], self.dropout)(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(self.channels * mult, self.dropout)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_heads)(h, labels)
      if level != 0:
        b, hh, ww, c = h.shape
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.Conv(c, (3, 3))(h)
    assert not skips
    h = nn.silu(GroupNorm(_groups(h.shape[-1]))(h))
    return nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
