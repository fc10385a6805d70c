"""The network of the Flax port of diffusers' `UNet2DModel`: its
hyper-parameters (UNetConfig, config.json's keys with diffusers' defaults)
and its modules, NHWC, with parameter paths that mirror diffusers'
(`down_blocks.0.resnets.1` is `down_blocks_0/resnets_1`).

diffusers_unet.py reads a model directory into these and re-exports them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.models.layers import GroupNorm

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D', 'ResnetDownsampleBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D', 'ResnetUpsampleBlock2D')
ACTIVATIONS = {'silu': nn.silu, 'swish': nn.silu, 'mish':
               lambda x: x * jnp.tanh(nn.softplus(x)),
               'gelu': lambda x: nn.gelu(x, approximate=False),
               'relu': nn.relu}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """UNet2DModel's config.json, with diffusers' defaults."""
  sample_size: Optional[object] = None
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_type: str = 'positional'
  time_embedding_dim: Optional[int] = None
  freq_shift: int = 0
  flip_sin_to_cos: bool = True
  down_block_types: tuple = ('DownBlock2D', 'AttnDownBlock2D',
                             'AttnDownBlock2D', 'AttnDownBlock2D')
  mid_block_type: Optional[str] = 'UNetMidBlock2D'
  up_block_types: tuple = ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D',
                           'UpBlock2D')
  block_out_channels: tuple = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  downsample_type: str = 'conv'
  upsample_type: str = 'conv'
  dropout: float = 0.0
  act_fn: str = 'silu'
  attention_head_dim: Optional[int] = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: Optional[int] = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = 'default'
  add_attention: bool = True
  class_embed_type: Optional[str] = None
  num_class_embeds: Optional[int] = None
  num_train_timesteps: Optional[int] = None

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or self.block_out_channels[0] * 4


# ----------------------------------------------------------------------------
# Layers, NHWC, named like diffusers' modules.


def _conv(features, kernel, stride=1, padding=0, name=None, use_bias=True):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 use_bias=use_bias, name=name)


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool, shift: float,
                       max_period: float = 10000.0):
  """diffusers' get_timestep_embedding (DDPM's sinusoids)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / (half - shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], -1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  dim: int
  act: str = 'silu'

  @nn.compact
  def __call__(self, x):
    # At least float32, at full precision, whatever the model dtype
    # (embeddings.py).
    dense = lambda name: nn.Dense(self.dim, name=name,
                                  precision=jax.lax.Precision.HIGHEST)
    x = dense('linear_1')(x)
    return dense('linear_2')(ACTIVATIONS[self.act](x))


class FourierProjection(nn.Module):
  """GaussianFourierProjection(log=True): fixed random frequencies."""
  size: int

  @nn.compact
  def __call__(self, t):
    w = self.param('weight', nn.initializers.normal(16.0), (self.size,))
    proj = jnp.log(t.astype(jnp.float32))[:, None] * w[None] * 2 * math.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], -1)


def conv_downsample(x, channels: int, padding: int):
  """diffusers' Downsample2D with a conv; padding 0 pads right and bottom
  by one, as diffusers does."""
  if padding == 0:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  return _conv(channels, 3, 2, padding, name='downsamplers_0_conv')(x)


def conv_upsample(x, channels: int):
  """diffusers' Upsample2D: nearest x2, then a 3x3 conv."""
  return _conv(channels, 3, padding=1,
               name='upsamplers_0_conv')(_resample(x, up=True))


def _resample(x, up: bool):
  b, h, w, c = x.shape
  if up:   # nearest, x2
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResnetBlock(nn.Module):
  out_channels: int
  groups: int
  eps: float
  scale_shift: bool = False
  output_scale: float = 1.0
  act: str = 'silu'
  up: bool = False
  down: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, temb, train: bool = False):
    act = ACTIVATIONS[self.act]
    h = act(GroupNorm(self.groups, epsilon=self.eps, name='norm1')(x))
    if self.up or self.down:
      x, h = _resample(x, self.up), _resample(h, self.up)
    h = _conv(self.out_channels, 3, padding=1, name='conv1')(h)
    if temb is None:   # an autoencoder's block: no time embedding
      h = GroupNorm(self.groups, epsilon=self.eps, name='norm2')(h)
      return self._out(x, h, act, train)
    t = nn.Dense(self.out_channels * (2 if self.scale_shift else 1),
                 name='time_emb_proj')(act(temb))[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = GroupNorm(self.groups, epsilon=self.eps, name='norm2')(h)
      h = h * (1 + scale) + shift
    else:
      h = GroupNorm(self.groups, epsilon=self.eps, name='norm2')(h + t)
    return self._out(x, h, act, train)

  def _out(self, x, h, act, train):
    h = nn.Dropout(self.dropout, deterministic=not train)(act(h))
    h = _conv(self.out_channels, 3, padding=1, name='conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, name='conv_shortcut')(x)
    return (x + h) / self.output_scale


class Attention(nn.Module):
  """Self-attention over the pixels, with a residual connection."""
  heads: int
  dim_head: int
  groups: Optional[int]
  eps: float
  rescale: float = 1.0

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = x
    if self.groups is not None:
      h = GroupNorm(self.groups, epsilon=self.eps, name='group_norm')(h)
    h = h.reshape(b, hh * ww, c)
    inner = self.heads * self.dim_head

    def heads(t):
      return t.reshape(b, hh * ww, self.heads, self.dim_head)
    q = heads(nn.Dense(inner, name='to_q')(h))
    k = heads(nn.Dense(inner, name='to_k')(h))
    v = heads(nn.Dense(inner, name='to_v')(h))
    o = jax.nn.dot_product_attention(q, k, v).reshape(b, hh * ww, inner)
    o = nn.Dense(c, name='to_out_0')(o).reshape(b, hh, ww, c)
    return (o + x) / self.rescale


class DownBlock(nn.Module):
  kind: str
  out_channels: int
  layers: int
  add_downsample: bool
  cfg: UNetConfig

  @nn.compact
  def __call__(self, x, temb, train=False):
    c = self.cfg
    res = _resnet_kwargs(c)
    outputs = []
    for i in range(self.layers):
      x = ResnetBlock(self.out_channels, **res, name=f'resnets_{i}')(
          x, temb, train)
      if self.kind == 'AttnDownBlock2D':
        x = _attention(c, self.out_channels, c.norm_num_groups,
                       name=f'attentions_{i}')(x)
      outputs.append(x)
    if self.add_downsample:
      if self.kind == 'ResnetDownsampleBlock2D' or (
          self.kind == 'AttnDownBlock2D' and c.downsample_type == 'resnet'):
        x = ResnetBlock(self.out_channels, **res, down=True,
                        name='downsamplers_0')(x, temb, train)
      else:
        x = conv_downsample(x, self.out_channels, c.downsample_padding)
      outputs.append(x)
    return x, outputs


class UpBlock(nn.Module):
  kind: str
  out_channels: int
  layers: int
  add_upsample: bool
  cfg: UNetConfig

  @nn.compact
  def __call__(self, x, skips, temb, train=False):
    c = self.cfg
    res = _resnet_kwargs(c)
    for i in range(self.layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ResnetBlock(self.out_channels, **res, name=f'resnets_{i}')(
          x, temb, train)
      if self.kind == 'AttnUpBlock2D':
        x = _attention(c, self.out_channels, c.norm_num_groups,
                       name=f'attentions_{i}')(x)
    if self.add_upsample:
      if self.kind == 'ResnetUpsampleBlock2D' or (
          self.kind == 'AttnUpBlock2D' and c.upsample_type == 'resnet'):
        x = ResnetBlock(self.out_channels, **res, up=True,
                        name='upsamplers_0')(x, temb, train)
      else:
        x = conv_upsample(x, self.out_channels)
    return x


def _resnet_kwargs(c: UNetConfig, scale: float = 1.0) -> dict:
  return dict(groups=c.norm_num_groups, eps=c.norm_eps,
              scale_shift=c.resnet_time_scale_shift == 'scale_shift',
              output_scale=scale, act=c.act_fn, dropout=c.dropout)


def _attention(c: UNetConfig, channels: int, groups, rescale=1.0, name=None):
  head_dim = c.attention_head_dim or channels
  return Attention(channels // head_dim, head_dim, groups, c.norm_eps,
                   rescale, name=name)


class UNet2D(nn.Module):
  """UNet2DModel, NHWC. `__call__(sample, timestep, class_labels=None)`."""
  cfg: UNetConfig

  @nn.compact
  def __call__(self, sample, timestep, class_labels=None, train=False):
    c = self.cfg
    ch = c.block_out_channels
    t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1),
                         (sample.shape[0],))
    if c.center_input_sample:
      sample = 2 * sample - 1.0
    if c.time_embedding_type == 'fourier':
      proj = FourierProjection(ch[0], name='time_proj')
    else:
      proj = lambda v: timestep_embedding(v, ch[0], c.flip_sin_to_cos,
                                          c.freq_shift)
    emb = TimestepEmbedding(c.time_embed_dim, name='time_embedding')(proj(t))
    if c.class_embed_type == 'timestep':
      if class_labels is None:
        raise ValueError('class_labels are required: the model is '
                         'class-conditional')
      emb = emb + TimestepEmbedding(c.time_embed_dim, name='class_embedding')(
          proj(class_labels))
    elif c.num_class_embeds is not None:
      if class_labels is None:
        raise ValueError('class_labels are required: the model is '
                         'class-conditional')
      emb = emb + nn.Embed(c.num_class_embeds, c.time_embed_dim,
                           name='class_embedding')(class_labels)

    x = _conv(ch[0], 3, padding=1, name='conv_in')(sample)
    skips = [x]
    for i, kind in enumerate(c.down_block_types):
      x, outs = DownBlock(kind, ch[i], c.layers_per_block, i < len(ch) - 1, c,
                          name=f'down_blocks_{i}')(x, emb, train)
      skips += outs
    if c.mid_block_type is not None:
      x = MidBlock(c, name='mid_block')(x, emb, train)
    rev = list(reversed(ch))
    for i, kind in enumerate(c.up_block_types):
      x = UpBlock(kind, rev[i], c.layers_per_block + 1, i < len(ch) - 1, c,
                  name=f'up_blocks_{i}')(x, skips, emb, train)
    groups = c.norm_num_groups or min(ch[0] // 4, 32)
    x = ACTIVATIONS[c.act_fn](GroupNorm(groups, epsilon=c.norm_eps,
                                        name='conv_norm_out')(x))
    x = _conv(c.out_channels, 3, padding=1, name='conv_out')(x)
    if c.time_embedding_type == 'fourier':
      x = x / t.reshape(-1, 1, 1, 1)
    return x


class MidBlock(nn.Module):
  cfg: UNetConfig

  @nn.compact
  def __call__(self, x, temb, train=False):
    c = self.cfg
    channels = x.shape[-1]
    scale = c.mid_block_scale_factor
    res = _resnet_kwargs(c, scale)
    groups = c.attn_norm_num_groups
    if groups is None and c.resnet_time_scale_shift == 'default':
      groups = c.norm_num_groups
    x = ResnetBlock(channels, **res, name='resnets_0')(x, temb, train)
    if c.add_attention:
      x = _attention(c, channels, groups, scale, name='attentions_0')(x)
    return ResnetBlock(channels, **res, name='resnets_1')(x, temb, train)
