"""A Flax port of diffusers' `AutoencoderKL` (Stable Diffusion's VAE),
loaded without torch.

  module, params = from_pretrained(directory)   # config.json + safetensors
  mean, logvar = module.apply(params, x_nhwc, method=module.encode)
  image = module.apply(params, z_nhwc, method=module.decode)

Both are NHWC and equal, for the same weights, to diffusers'
`vae.encode(x).latent_dist.mean / .logvar` and `vae.decode(z).sample`.
`module.cfg.scaling_factor` (and `shift_factor`) map the posterior to the
diffusion model's latents as diffusers' pipelines do:
z = (latent - shift_factor) * scaling_factor.

Covered: DownEncoderBlock2D, UpDecoderBlock2D, the attention mid block (or
none: mid_block_add_attention), quant_conv and post_quant_conv (or not).
Other keys (for example a spatial-norm decoder) end in one line naming the
key. Parameter paths mirror diffusers' (`encoder.down_blocks.0.resnets.1`
is `encoder/down_blocks_0/resnets_1`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.models import diffusers_unet as du
from mmd_jax.models.diffusers_net import (ACTIVATIONS, DownBlock, MidBlock,
                                          ResnetBlock, _conv, conv_upsample)
from mmd_jax.models.layers import GroupNorm
from mmd_jax.workdir import fs

DOWN_BLOCKS = ('DownEncoderBlock2D',)
UP_BLOCKS = ('UpDecoderBlock2D',)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """AutoencoderKL's config.json, with diffusers' defaults."""
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple = ('DownEncoderBlock2D',)
  up_block_types: tuple = ('UpDecoderBlock2D',)
  block_out_channels: tuple = (64,)
  layers_per_block: int = 1
  act_fn: str = 'silu'
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 32
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  latents_mean: Optional[tuple] = None
  latents_std: Optional[tuple] = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True


@dataclasses.dataclass(frozen=True)
class _Blocks:
  """What diffusers_net's blocks read from a config, as the VAE sets it
  (eps 1e-6, unpadded downsampling, one attention head)."""
  norm_num_groups: int
  act_fn: str
  add_attention: bool
  norm_eps: float = 1e-6
  resnet_time_scale_shift: str = 'default'
  dropout: float = 0.0
  downsample_padding: int = 0
  downsample_type: str = 'conv'
  upsample_type: str = 'conv'
  attention_head_dim: Optional[int] = None
  attn_norm_num_groups: Optional[int] = None
  mid_block_scale_factor: float = 1.0


def _blocks(c: VAEConfig) -> _Blocks:
  return _Blocks(c.norm_num_groups, c.act_fn, c.mid_block_add_attention)


def _norm_act(c: VAEConfig, x, name: str):
  # diffusers' Encoder and Decoder end in SiLU whatever act_fn says.
  return nn.silu(GroupNorm(c.norm_num_groups, epsilon=1e-6, name=name)(x))


class Encoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    c, ch = self.cfg, self.cfg.block_out_channels
    x = _conv(ch[0], 3, padding=1, name='conv_in')(x)
    for i in range(len(ch)):
      x, _ = DownBlock('DownEncoderBlock2D', ch[i], c.layers_per_block,
                       i < len(ch) - 1, _blocks(c),
                       name=f'down_blocks_{i}')(x, None)
    x = MidBlock(_blocks(c), name='mid_block')(x, None)
    return _conv(2 * c.latent_channels, 3, padding=1,
                 name='conv_out')(_norm_act(c, x, 'conv_norm_out'))


class UpDecoderBlock(nn.Module):
  out_channels: int
  layers: int
  add_upsample: bool
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    b = _blocks(self.cfg)
    for j in range(self.layers):
      x = ResnetBlock(self.out_channels, b.norm_num_groups, b.norm_eps,
                      act=b.act_fn, name=f'resnets_{j}')(x, None)
    if self.add_upsample:
      x = conv_upsample(x, self.out_channels)
    return x


class Decoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z):
    c, rev = self.cfg, tuple(reversed(self.cfg.block_out_channels))
    x = _conv(rev[0], 3, padding=1, name='conv_in')(z)
    x = MidBlock(_blocks(c), name='mid_block')(x, None)
    for i in range(len(rev)):
      x = UpDecoderBlock(rev[i], c.layers_per_block + 1, i < len(rev) - 1, c,
                         name=f'up_blocks_{i}')(x)
    return _conv(c.out_channels, 3, padding=1,
                 name='conv_out')(_norm_act(c, x, 'conv_norm_out'))


class AutoencoderKL(nn.Module):
  """`encode(x) -> (mean, logvar)` of the diagonal Gaussian posterior
  (logvar clipped to [-30, 20] as diffusers does); `decode(z) -> x`."""
  cfg: VAEConfig

  def setup(self):
    c = self.cfg
    self.encoder = Encoder(c)
    self.decoder = Decoder(c)
    if c.use_quant_conv:
      self.quant_conv = _conv(2 * c.latent_channels, 1)
    if c.use_post_quant_conv:
      self.post_quant_conv = _conv(c.latent_channels, 1)

  def encode(self, x):
    h = self.encoder(x)
    if self.cfg.use_quant_conv:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    if self.cfg.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


def config_from_dict(d: dict, where: str = 'config.json') -> VAEConfig:
  """VAEConfig from an AutoencoderKL config.json dict; one line naming the
  first thing the port does not build."""
  cls = d.get('_class_name', 'AutoencoderKL')
  if cls != 'AutoencoderKL':
    raise du.DiffusersImportError(f'{where}: _class_name {cls!r} is not '
                                  'AutoencoderKL')
  fields = {f.name for f in dataclasses.fields(VAEConfig)}
  kw = {}
  for k, v in d.items():
    if k in du.BOOKKEEPING:
      continue
    if k not in fields:
      raise du.DiffusersImportError(f'{where}: unknown AutoencoderKL config '
                                    f'key {k!r}')
    kw[k] = tuple(v) if isinstance(v, list) else v
  c = VAEConfig(**kw)

  def need(cond, key, msg):
    if not cond:
      raise du.DiffusersImportError(f'{where}: {key} {msg}')
  for key, kinds in (('down_block_types', DOWN_BLOCKS),
                     ('up_block_types', UP_BLOCKS)):
    for t in getattr(c, key):
      need(t in kinds, key, f'has unsupported block type {t!r}; '
           f'supported: {kinds}')
    need(len(getattr(c, key)) == len(c.block_out_channels), key,
         'must have one entry per block_out_channels')
  need(c.act_fn in ACTIVATIONS, 'act_fn', f'{c.act_fn!r} is not supported')
  for key in ('latents_mean', 'latents_std'):
    need(getattr(c, key) is None, key, 'is not supported: the port maps '
         'latents with scaling_factor and shift_factor only')
  need(isinstance(c.sample_size, int), 'sample_size', f'{c.sample_size!r}: '
       'only square images (an int) are supported')
  return c


def abstract_params(module: AutoencoderKL):
  c = module.cfg
  x = jnp.zeros((1, c.sample_size, c.sample_size, c.in_channels))
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


def from_pretrained(directory: str):
  """(AutoencoderKL module, params) of a diffusers AutoencoderKL directory
  (a pipeline's vae/)."""
  path = os.path.join(directory, 'config.json')
  if not fs.isfile(path):
    raise du.DiffusersImportError(f'{directory} has no config.json: not a '
                                  'diffusers model directory')
  module = AutoencoderKL(config_from_dict(du.read_json(path), path))
  params = du.load_weights(directory)
  du.check_against(params, abstract_params(module), os.path.join(
      directory, du.WEIGHTS_FILE))
  return module, jax.tree.map(jnp.asarray, params)
