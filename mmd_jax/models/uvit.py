"""U-ViT of "simple diffusion" (Hoogeboom et al. 2023): a convolutional U
whose lowest resolution is a transformer stack.

Inputs are patched first (space-to-depth by `patch_size`), so the convolutional
levels and the transformer run on a smaller grid. Convolutional levels are
residual blocks with scale-shift conditioning (unet.ResBlock); transformer
blocks are pre-LayerNorm with adaptive scale/shift from the conditioning
vector. Compute runs in `dtype` (bfloat16 on accelerators) while parameters
stay float32; `remat` rematerialises every block in the backward pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmd_jax.models.cross_attention import CrossAttention
from mmd_jax.models.embeddings import Conditioning, is_caption
from mmd_jax.models.layers import GroupNorm, attention_fn
from mmd_jax.models.unet import _groups


class ConvBlock(nn.Module):
  out_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    norm = lambda c: GroupNorm(_groups(c), dtype=self.dtype)
    h = nn.silu(norm(x.shape[-1])(x))
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
    scale, shift = jnp.split(
        nn.Dense(2 * self.out_channels, dtype=self.dtype)(emb), 2, axis=-1)
    h = norm(self.out_channels)(h)
    h = nn.silu(h * (1 + scale[:, None, None, :]) + shift[:, None, None, :])
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype,
                kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)
    return x + h


class TransformerBlock(nn.Module):
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool, cond=None):
    d = x.shape[-1]
    # One projection of the conditioning gives both norms' scale and shift.
    mod = nn.Dense(4 * d, dtype=self.dtype,
                   kernel_init=nn.initializers.zeros)(emb)[:, None, :]
    s1, b1, s2, b2 = jnp.split(mod, 4, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype)(x)
    h = h * (1 + s1) + b1
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, attention_fn=attention_fn,
        out_kernel_init=nn.initializers.zeros)(h, h)
    x = x + h
    if is_caption(cond):
      x = CrossAttention(self.num_heads)(x, cond)
    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype)(x)
    h = nn.Dense(self.mlp_ratio * d, dtype=self.dtype)(h * (1 + s2) + b2)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h))
    h = nn.Dense(d, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return x + h


class UViT(nn.Module):
  channels: Sequence[int] = (128, 256)   # conv levels, highest resolution first
  num_res_blocks: Sequence[int] = (2, 2)
  patch_size: int = 1
  transformer_width: int = 512
  transformer_depth: int = 4
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, z, lam, labels=None, train: bool = False):
    b, hh, ww, c = z.shape
    p = self.patch_size
    if hh % p or ww % p:
      raise ValueError(f'image {hh}x{ww} is not divisible by patch_size {p}')
    conv_block = nn.remat(ConvBlock, static_argnums=(3,)) if self.remat \
        else ConvBlock
    tblock = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat \
        else TransformerBlock
    emb = nn.silu(Conditioning(self.transformer_width, self.num_classes)(
        lam, labels)).astype(self.dtype)

    h = z.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(b, hh // p, ww // p, p * p * c).astype(self.dtype)
    h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(h)
    skips = []
    # Explicit names: the same parameter tree with and without remat.
    for level, (ch, nb) in enumerate(zip(self.channels, self.num_res_blocks)):
      for j in range(nb):
        h = conv_block(ch, self.dropout, self.dtype,
                       name=f'down_{level}_{j}')(h, emb, train)
        skips.append(h)
      nxt = self.channels[level + 1] if level + 1 < len(self.channels) \
          else self.transformer_width
      h = nn.Conv(nxt, (3, 3), strides=(2, 2), dtype=self.dtype)(h)

    _, gh, gw, d = h.shape
    t = h.reshape(b, gh * gw, d)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02),
                     (1, gh * gw, d))
    t = t + pos.astype(self.dtype)
    for i in range(self.transformer_depth):
      t = tblock(self.num_heads, self.mlp_ratio, self.dropout, self.dtype,
                 name=f'transformer_{i}')(t, emb, train, labels)
    h = nn.LayerNorm(dtype=self.dtype)(t).reshape(b, gh, gw, d)

    for level in reversed(range(len(self.channels))):
      ch = self.channels[level]
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
      h = nn.Conv(ch, (3, 3), dtype=self.dtype)(h)
      for j in range(self.num_res_blocks[level]):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = conv_block(ch, self.dropout, self.dtype,
                       name=f'up_{level}_{j}')(h, emb, train)
    assert not skips
    h = nn.silu(GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
    h = nn.Conv(p * p * c, (3, 3), dtype=self.dtype,
                kernel_init=nn.initializers.zeros)(h)
    h = h.reshape(b, hh // p, ww // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, hh, ww, c).astype(jnp.float32)
