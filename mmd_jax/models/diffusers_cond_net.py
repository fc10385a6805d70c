"""The network of the Flax port of diffusers' `UNet2DConditionModel` (the
Stable Diffusion 1.x/2.x UNet): its hyper-parameters (CondUNetConfig,
config.json's keys with diffusers' defaults) and its modules, NHWC, with
parameter paths that mirror diffusers' (`down_blocks.0.attentions.1.
transformer_blocks.0.attn2.to_k` is `down_blocks_0/attentions_1/
transformer_blocks_0/attn2/to_k`).

Plain blocks (ResnetBlock, DownBlock2D, UpBlock2D, the time embedding) are
diffusers_net.py's; this file adds the caption path: Transformer2DModel,
BasicTransformerBlock (self-attention, cross-attention, GEGLU) and the
cross-attention down, up and mid blocks.

diffusers names the number of heads `attention_head_dim` in these UNets
(its issue 2011): heads = num_attention_heads or attention_head_dim, per
block, and each head has out_channels // heads channels.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.models.diffusers_net import (ACTIVATIONS, DownBlock, ResnetBlock,
                                          UpBlock, _conv, _resnet_kwargs,
                                          conv_downsample, conv_upsample,
                                          timestep_embedding)
from mmd_jax.models.layers import GroupNorm

COND_DOWN_BLOCKS = ('DownBlock2D', 'CrossAttnDownBlock2D')
COND_UP_BLOCKS = ('UpBlock2D', 'CrossAttnUpBlock2D')
# diffusers turns a 0/1 caption mask into this additive bias on the
# attention logits. Not -inf: a fully masked caption shifts every logit
# alike, so it attends as if unmasked (and never to NaN).
MASK_BIAS = -10000.0


@dataclasses.dataclass(frozen=True)
class CondUNetConfig:
  """UNet2DConditionModel's config.json keys this port builds, with
  diffusers' defaults."""
  sample_size: Optional[object] = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  down_block_types: tuple = ('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                             'CrossAttnDownBlock2D', 'DownBlock2D')
  mid_block_type: Optional[str] = 'UNetMidBlock2DCrossAttn'
  up_block_types: tuple = ('UpBlock2D', 'CrossAttnUpBlock2D',
                           'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D')
  only_cross_attention: object = False
  block_out_channels: tuple = (320, 640, 1280, 1280)
  layers_per_block: object = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  dropout: float = 0.0
  act_fn: str = 'silu'
  norm_num_groups: Optional[int] = 32
  norm_eps: float = 1e-5
  cross_attention_dim: object = 1280
  transformer_layers_per_block: object = 1
  reverse_transformer_layers_per_block: Optional[tuple] = None
  attention_head_dim: object = 8
  num_attention_heads: object = None
  use_linear_projection: bool = False
  upcast_attention: bool = False
  resnet_time_scale_shift: str = 'default'
  time_embedding_dim: Optional[int] = None
  time_embedding_act_fn: Optional[str] = None
  timestep_post_act: Optional[str] = None
  time_cond_proj_dim: Optional[int] = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  # Read by diffusers_net's plain blocks; fixed in this UNet.
  downsample_type: str = 'conv'
  upsample_type: str = 'conv'

  def per_block(self, name: str) -> tuple:
    """A per-block setting as a tuple (diffusers takes one value for all)."""
    v = getattr(self, name)
    if name == 'num_attention_heads' and v is None:
      v = self.attention_head_dim
    n = len(self.down_block_types)
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n

  def layers_down(self, i: int) -> tuple:
    """Transformer layers of each of down block i's attentions."""
    v = self.per_block('transformer_layers_per_block')[i]
    n = self.per_block('layers_per_block')[i]
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n

  def layers_up(self, i: int) -> tuple:
    """Transformer layers of each of up block i's attentions."""
    n = self.per_block('layers_per_block')[::-1][i] + 1
    if self.reverse_transformer_layers_per_block is not None:
      v = self.reverse_transformer_layers_per_block[i]
    else:
      v = self.per_block('transformer_layers_per_block')[::-1][i]
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or self.block_out_channels[0] * 4

  @property
  def context_dim(self) -> int:
    return self.per_block('cross_attention_dim')[0]


class Attention(nn.Module):
  """diffusers' Attention over tokens: to_q/to_k/to_v without bias, to_out
  with; `bias` [B, 1, L] is added to the logits (the caption mask)."""
  heads: int
  dim_head: int
  out_dim: int

  @nn.compact
  def __call__(self, x, context=None, bias=None):
    context = x if context is None else context
    inner = self.heads * self.dim_head
    split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.dim_head))
    q = split(nn.Dense(inner, use_bias=False, name='to_q')(x))
    k = split(nn.Dense(inner, use_bias=False, name='to_k')(context))
    v = split(nn.Dense(inner, use_bias=False, name='to_v')(context))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * self.dim_head ** -0.5
    if bias is not None:
      logits = logits + bias[:, None, :, :]
    w = jax.nn.softmax(logits.astype(jnp.float32), -1).astype(v.dtype)
    o = jnp.einsum('bhqk,bkhd->bqhd', w, v).reshape(x.shape[:2] + (inner,))
    return nn.Dense(self.out_dim, name='to_out_0')(o)


class GEGLU(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    h, gate = jnp.split(nn.Dense(2 * self.features, name='proj')(x), 2, -1)
    return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.dim, name='net_2')(GEGLU(4 * self.dim,
                                                  name='net_0')(x))


class BasicTransformerBlock(nn.Module):
  """Self-attention (cross-attention to the caption when
  `only_cross`, unmasked as in diffusers), cross-attention to the caption
  with its mask, then a GEGLU feed-forward; pre-LayerNorm residuals."""
  heads: int
  dim_head: int
  only_cross: bool
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, context, bias):
    dim = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, name=name)
    attn = lambda name: Attention(self.heads, self.dim_head, dim, name=name)
    x = x + attn('attn1')(norm('norm1')(x),
                          context if self.only_cross else None)
    x = x + attn('attn2')(norm('norm2')(x), context, bias)
    return x + FeedForward(dim, name='ff')(norm('norm3')(x))


class Transformer2D(nn.Module):
  """Transformer2DModel on continuous input: GroupNorm, a 1x1 conv (or
  linear) projection in, the blocks over the pixels as tokens, the
  projection out, and the residual."""
  heads: int
  layers: int
  groups: int
  linear: bool
  only_cross: bool = False

  @nn.compact
  def __call__(self, x, context, bias):
    b, h, w, c = x.shape
    dim_head = c // self.heads
    inner = self.heads * dim_head
    y = GroupNorm(self.groups, epsilon=1e-6, name='norm')(x)
    if self.linear:
      y = nn.Dense(inner, name='proj_in')(y.reshape(b, h * w, c))
    else:
      y = _conv(inner, 1, name='proj_in')(y).reshape(b, h * w, inner)
    for i in range(self.layers):
      y = BasicTransformerBlock(self.heads, dim_head, self.only_cross,
                                name=f'transformer_blocks_{i}')(
                                    y, context, bias)
    if self.linear:
      y = nn.Dense(c, name='proj_out')(y).reshape(b, h, w, c)
    else:
      y = _conv(c, 1, name='proj_out')(y.reshape(b, h, w, inner))
    return y + x


def _transformer(c: CondUNetConfig, i: int, layers: int, only_cross: bool,
                 name: str, reverse: bool = False):
  heads = c.per_block('num_attention_heads')
  heads = heads[::-1][i] if reverse else heads[i]
  return Transformer2D(heads, layers, c.norm_num_groups,
                       c.use_linear_projection, only_cross, name=name)


def _only_cross(c: CondUNetConfig, i: int, reverse: bool = False) -> bool:
  v = c.per_block('only_cross_attention')
  return bool(v[::-1][i] if reverse else v[i])


class CrossAttnDownBlock(nn.Module):
  index: int
  out_channels: int
  add_downsample: bool
  cfg: CondUNetConfig

  @nn.compact
  def __call__(self, x, temb, context, bias):
    c, i = self.cfg, self.index
    outputs = []
    for j, layers in enumerate(c.layers_down(i)):
      x = ResnetBlock(self.out_channels, **_resnet_kwargs(c),
                      name=f'resnets_{j}')(x, temb)
      x = _transformer(c, i, layers, _only_cross(c, i),
                       f'attentions_{j}')(x, context, bias)
      outputs.append(x)
    if self.add_downsample:
      x = conv_downsample(x, self.out_channels, c.downsample_padding)
      outputs.append(x)
    return x, outputs


class CrossAttnUpBlock(nn.Module):
  index: int
  out_channels: int
  add_upsample: bool
  cfg: CondUNetConfig

  @nn.compact
  def __call__(self, x, skips, temb, context, bias):
    c, i = self.cfg, self.index
    for j, layers in enumerate(c.layers_up(i)):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ResnetBlock(self.out_channels, **_resnet_kwargs(c),
                      name=f'resnets_{j}')(x, temb)
      x = _transformer(c, i, layers, _only_cross(c, i, True),
                       f'attentions_{j}', reverse=True)(x, context, bias)
    if self.add_upsample:
      x = conv_upsample(x, self.out_channels)
    return x


class CrossAttnMidBlock(nn.Module):
  cfg: CondUNetConfig

  @nn.compact
  def __call__(self, x, temb, context, bias):
    c = self.cfg
    res = _resnet_kwargs(c, c.mid_block_scale_factor)
    layers = c.per_block('transformer_layers_per_block')[-1]
    layers = layers[0] if isinstance(layers, (list, tuple)) else layers
    x = ResnetBlock(x.shape[-1], **res, name='resnets_0')(x, temb)
    x = _transformer(c, len(c.block_out_channels) - 1, layers, False,
                     'attentions_0')(x, context, bias)
    return ResnetBlock(x.shape[-1], **res, name='resnets_1')(x, temb)


class CondTimestepEmbedding(nn.Module):
  """TimestepEmbedding with diffusers' optional `cond_proj` (an LCM's
  guidance-scale embedding, added to the sinusoids) and post-activation."""
  dim: int
  act: str
  post_act: Optional[str] = None
  cond_proj: bool = False

  @nn.compact
  def __call__(self, x, cond=None):
    dense = lambda name, **kw: nn.Dense(self.dim, name=name, **kw,
                                        precision=jax.lax.Precision.HIGHEST)
    if self.cond_proj:
      if cond is None:
        raise ValueError('timestep_cond is required: the model has '
                         'time_cond_proj_dim')
      x = x + nn.Dense(x.shape[-1], use_bias=False, name='cond_proj',
                       precision=jax.lax.Precision.HIGHEST)(cond)
    x = dense('linear_2')(ACTIVATIONS[self.act](dense('linear_1')(x)))
    return ACTIVATIONS[self.post_act](x) if self.post_act else x


class UNet2DCondition(nn.Module):
  """UNet2DConditionModel, NHWC. `__call__(sample, timestep,
  encoder_hidden_states, encoder_attention_mask=None, timestep_cond=None)`;
  the mask [B, L] holds 1 for tokens to attend to, 0 for padding. The
  run's caption condition {'emb', 'mask'[, 'pooled']} may stand in for
  `encoder_hidden_states` (the mask then comes from it; SD UNets take no
  pooled vector)."""
  cfg: CondUNetConfig

  @nn.compact
  def __call__(self, sample, timestep, encoder_hidden_states,
               encoder_attention_mask=None, timestep_cond=None, train=False):
    del train   # no dropout layers: imports with dropout are refused
    c = self.cfg
    ch = c.block_out_channels
    if isinstance(encoder_hidden_states, dict):
      encoder_attention_mask = encoder_hidden_states.get('mask')
      encoder_hidden_states = encoder_hidden_states['emb']
    ctx = encoder_hidden_states
    bias = None if encoder_attention_mask is None else (
        (1.0 - encoder_attention_mask.astype(ctx.dtype)) * MASK_BIAS)[:, None]
    t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1),
                         (sample.shape[0],))
    if c.center_input_sample:
      sample = 2 * sample - 1.0
    emb = CondTimestepEmbedding(
        c.time_embed_dim, c.act_fn, c.timestep_post_act,
        c.time_cond_proj_dim is not None, name='time_embedding')(
            timestep_embedding(t, ch[0], c.flip_sin_to_cos, c.freq_shift),
            timestep_cond)
    if c.time_embedding_act_fn:
      emb = ACTIVATIONS[c.time_embedding_act_fn](emb)
    x = _conv(ch[0], c.conv_in_kernel, padding=(c.conv_in_kernel - 1) // 2,
              name='conv_in')(sample)
    skips = [x]
    per = c.per_block('layers_per_block')
    for i, kind in enumerate(c.down_block_types):
      last = i == len(ch) - 1
      if kind == 'CrossAttnDownBlock2D':
        x, outs = CrossAttnDownBlock(i, ch[i], not last, c,
                                     name=f'down_blocks_{i}')(
                                         x, emb, ctx, bias)
      else:
        x, outs = DownBlock(kind, ch[i], per[i], not last, c,
                            name=f'down_blocks_{i}')(x, emb)
      skips += outs
    if c.mid_block_type is not None:
      x = CrossAttnMidBlock(c, name='mid_block')(x, emb, ctx, bias)
    rev, rper = list(reversed(ch)), per[::-1]
    for i, kind in enumerate(c.up_block_types):
      last = i == len(ch) - 1
      if kind == 'CrossAttnUpBlock2D':
        x = CrossAttnUpBlock(i, rev[i], not last, c, name=f'up_blocks_{i}')(
            x, skips, emb, ctx, bias)
      else:
        x = UpBlock(kind, rev[i], rper[i] + 1, not last, c,
                    name=f'up_blocks_{i}')(x, skips, emb)
    if c.norm_num_groups is not None:
      x = ACTIVATIONS[c.act_fn](GroupNorm(c.norm_num_groups,
                                          epsilon=c.norm_eps,
                                          name='conv_norm_out')(x))
    return _conv(c.out_channels, c.conv_out_kernel,
                 padding=(c.conv_out_kernel - 1) // 2, name='conv_out')(x)
