"""A Flax port of diffusers' `UNet2DModel` and `UNet2DConditionModel`,
loaded without torch.

  module, params = from_pretrained(directory)   # config.json + safetensors
  out = module.apply(params, sample, timestep, class_labels)   # UNet2DModel
  out = module.apply(params, sample, timestep,                 # conditional
                     encoder_hidden_states=E, encoder_attention_mask=M)

`sample` is NHWC; `out` is, in NHWC, what diffusers'
`UNet2DModel(sample_nchw, timestep, class_labels).sample` (or
`UNet2DConditionModel(...)`) returns for the same weights. The class is
read from config.json's `_class_name`. The network is built from the model's `config.json`; an
unknown key, block type or option fails with one line naming it. Weights
come from `diffusion_pytorch_model.safetensors` through the `safetensors`
package's numpy API, checked name by name and shape by shape.

Covered (UNet2DConditionModel, the Stable Diffusion 1.x/2.x UNet): its
DownBlock2D, UpBlock2D, CrossAttnDownBlock2D, CrossAttnUpBlock2D and
UNetMidBlock2DCrossAttn; Transformer2DModel with conv or linear
projections, BasicTransformerBlock (self-attention, cross-attention with
the caption mask, GEGLU); heads as an int or per block; transformer layers
per block (or per layer); only_cross_attention; time_cond_proj_dim. Keys
for other extras (SDXL's added conditions, class embeddings, encoder
projections) end in one line naming the key (diffusers_cond_net.py).

Covered (UNet2DModel): DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D, UpBlock2D,
AttnUpBlock2D, ResnetUpsampleBlock2D and UNetMidBlock2D; positional or
Fourier time embeddings; class embeddings (a table, or `timestep`);
`resnet_time_scale_shift` default or scale_shift; conv or resnet
resampling. Parameter paths mirror diffusers' (`down_blocks.0.resnets.1`
is `down_blocks_0/resnets_1`), and attention weights saved under the old
names (query/key/value/proj_attn) load too.

The network and its config live in diffusers_net.py; its names are public
here too. This module reads a model directory into them.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.errors import Error
from mmd_jax.workdir import fs, param_files
from mmd_jax.models.diffusers_cond_net import (  # noqa: F401
    COND_DOWN_BLOCKS, COND_UP_BLOCKS, CondUNetConfig, UNet2DCondition)
from mmd_jax.models.diffusers_net import (  # noqa: F401 (public here too)
    ACTIVATIONS, DOWN_BLOCKS, UP_BLOCKS, Attention, DownBlock,
    FourierProjection, MidBlock, ResnetBlock, TimestepEmbedding, UNet2D,
    UNetConfig, UpBlock, timestep_embedding)

WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors'


class DiffusersImportError(Error, ValueError):
  """The directory does not hold a UNet2DModel this port can build."""


# Keys diffusers writes that do not shape the network.
BOOKKEEPING = ('_class_name', '_diffusers_version', '_name_or_path',
                '_use_default_values')


def config_from_dict(d: dict, where: str = 'config.json') -> UNetConfig:
  """UNetConfig from a config.json dict; one line naming the first thing
  the port does not build."""
  fields = {f.name for f in dataclasses.fields(UNetConfig)}
  cls = d.get('_class_name', 'UNet2DModel')
  if cls != 'UNet2DModel':
    raise DiffusersImportError(f'{where}: _class_name {cls!r} is not '
                               'UNet2DModel or UNet2DConditionModel')
  kw = {}
  for k, v in d.items():
    if k in BOOKKEEPING:
      continue
    if k not in fields:
      raise DiffusersImportError(f'{where}: unknown UNet2DModel config key '
                                 f'{k!r}')
    kw[k] = tuple(v) if isinstance(v, list) else v
  c = UNetConfig(**kw)

  def need(cond, key, msg):
    if not cond:
      raise DiffusersImportError(f'{where}: {key} {msg}')
  for t in c.down_block_types:
    need(t in DOWN_BLOCKS, 'down_block_types',
         f'has unsupported block type {t!r}; supported: {DOWN_BLOCKS}')
  for t in c.up_block_types:
    need(t in UP_BLOCKS, 'up_block_types',
         f'has unsupported block type {t!r}; supported: {UP_BLOCKS}')
  need(c.mid_block_type in (None, 'UNetMidBlock2D'), 'mid_block_type',
       f'{c.mid_block_type!r} is not supported (UNetMidBlock2D or null)')
  need(len(c.down_block_types) == len(c.up_block_types) ==
       len(c.block_out_channels), 'down_block_types',
       'up_block_types and block_out_channels must have one entry per level')
  need(c.time_embedding_type in ('positional', 'fourier'),
       'time_embedding_type', f'{c.time_embedding_type!r} is not supported '
       "('positional', 'fourier')")
  need(c.class_embed_type in (None, 'timestep'), 'class_embed_type',
       f'{c.class_embed_type!r} is not supported (null or "timestep")')
  need(c.resnet_time_scale_shift in ('default', 'scale_shift'),
       'resnet_time_scale_shift', f'{c.resnet_time_scale_shift!r} is not '
       "supported ('default', 'scale_shift')")
  need(c.downsample_type in ('conv', 'resnet'), 'downsample_type',
       f'{c.downsample_type!r} is not supported')
  need(c.upsample_type in ('conv', 'resnet'), 'upsample_type',
       f'{c.upsample_type!r} is not supported')
  need(c.act_fn in ACTIVATIONS, 'act_fn', f'{c.act_fn!r} is not supported; '
       f'supported: {tuple(ACTIVATIONS)}')
  return c


# UNet2DConditionModel keys that must keep their default: they build
# inputs and layers this port does not have.
_COND_FIXED = {
    'encoder_hid_dim': None, 'encoder_hid_dim_type': None,
    'dual_cross_attention': False, 'class_embed_type': None,
    'num_class_embeds': None, 'addition_embed_type': None,
    'addition_time_embed_dim': None, 'time_embedding_type': 'positional',
    'projection_class_embeddings_input_dim': None,
    'attention_type': 'default', 'class_embeddings_concat': False}
# Keys that shape only block types the port refuses anyway.
_COND_IGNORED = ('resnet_skip_time_act', 'resnet_out_scale_factor',
                 'mid_block_only_cross_attention', 'cross_attention_norm',
                 'addition_embed_type_num_heads')


def cond_config_from_dict(d: dict, where: str = 'config.json'
                          ) -> CondUNetConfig:
  """CondUNetConfig from a UNet2DConditionModel config.json dict; one line
  naming the first key the port does not build."""
  fields = {f.name for f in dataclasses.fields(CondUNetConfig)}
  kw = {}
  for k, v in d.items():
    if k in BOOKKEEPING or k in _COND_IGNORED:
      continue
    if k in _COND_FIXED:
      if v != _COND_FIXED[k]:
        raise DiffusersImportError(
            f'{where}: {k}={v!r} is not supported (this port builds SD '
            f'1.x/2.x-style UNets; {k} must be {_COND_FIXED[k]!r})')
      continue
    if k not in fields or k in ('downsample_type', 'upsample_type'):
      raise DiffusersImportError(f'{where}: unknown UNet2DConditionModel '
                                 f'config key {k!r}')
    kw[k] = _tuples(v)
  c = CondUNetConfig(**kw)

  def need(cond, key, msg):
    if not cond:
      raise DiffusersImportError(f'{where}: {key} {msg}')
  n = len(c.block_out_channels)
  for key, kinds in (('down_block_types', COND_DOWN_BLOCKS),
                     ('up_block_types', COND_UP_BLOCKS)):
    for t in getattr(c, key):
      need(t in kinds, key, f'has unsupported block type {t!r}; '
           f'supported: {kinds}')
    need(len(getattr(c, key)) == n, key, 'must have one entry per '
         'block_out_channels')
  need(c.mid_block_type in (None, 'UNetMidBlock2DCrossAttn'),
       'mid_block_type', f'{c.mid_block_type!r} is not supported '
       '(UNetMidBlock2DCrossAttn or null)')
  need(c.norm_num_groups is not None, 'norm_num_groups', 'null is not '
       'supported')
  for key in ('layers_per_block', 'attention_head_dim', 'num_attention_heads',
              'cross_attention_dim', 'only_cross_attention',
              'transformer_layers_per_block'):
    need(len(c.per_block(key)) == n, key, 'must have one entry per block')
  rev = c.reverse_transformer_layers_per_block
  nested = any(isinstance(v, (list, tuple))
               for v in c.per_block('transformer_layers_per_block'))
  need(not nested or rev is not None, 'transformer_layers_per_block',
       'per layer needs reverse_transformer_layers_per_block too (as '
       'diffusers requires)')
  need(rev is None or len(rev) == n, 'reverse_transformer_layers_per_block',
       'must have one entry per block')
  need(len(set(c.per_block('cross_attention_dim'))) == 1,
       'cross_attention_dim', 'must be the same for every block (one '
       'caption embedding)')
  for key in ('act_fn', 'timestep_post_act', 'time_embedding_act_fn'):
    need(getattr(c, key) in ACTIVATIONS or (key != 'act_fn' and
                                            getattr(c, key) is None),
         key, f'{getattr(c, key)!r} is not supported; supported: '
         f'{tuple(ACTIVATIONS)}')
  need(c.resnet_time_scale_shift == 'default', 'resnet_time_scale_shift',
       f'{c.resnet_time_scale_shift!r} is not supported (default)')
  return c


def _tuples(v):
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def read_json(path: str) -> dict:
  """A diffusers JSON file (config.json, scheduler_config.json); a damaged
  one is a one-line DiffusersImportError naming it."""
  try:
    d = json.loads(fs.read_text(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DiffusersImportError(f'{path} is not valid JSON ({e})') from None
  if not isinstance(d, dict):
    raise DiffusersImportError(f'{path} holds a JSON {type(d).__name__}, not '
                               'an object of settings')
  return d


def read_any_config(directory: str):
  """UNetConfig or CondUNetConfig, by config.json's `_class_name`."""
  path = os.path.join(directory, 'config.json')
  if not fs.isfile(path):
    raise DiffusersImportError(f'{directory} has no config.json: not a '
                               'diffusers model directory')
  d = read_json(path)
  if d.get('_class_name') == 'UNet2DConditionModel':
    return cond_config_from_dict(d, path)
  return config_from_dict(d, path)


def read_config(directory: str) -> UNetConfig:
  path = os.path.join(directory, 'config.json')
  if not fs.isfile(path):
    raise DiffusersImportError(f'{directory} has no config.json: not a '
                               'diffusers model directory')
  return config_from_dict(read_json(path), path)


# ----------------------------------------------------------------------------
# Weights.

_LEGACY_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                     'proj_attn': 'to_out.0'}


def flax_path(torch_key: str, ndim: int) -> tuple:
  """('down_blocks_0', 'resnets_1', 'conv1', 'kernel') for
  'down_blocks.0.resnets.1.conv1.weight' (and where the array must be
  transposed: see `convert`)."""
  parts = torch_key.split('.')
  if len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
    parts = parts[:-2] + _LEGACY_ATTENTION[parts[-2]].split('.') + parts[-1:]
  mods = []
  for p in parts[:-1]:
    if p.isdigit() and mods:
      mods[-1] = f'{mods[-1]}_{p}'
    else:
      mods.append(p)
  # Conv resamplers are one layer in the port, not a module around one.
  if len(mods) >= 2 and mods[-1] in ('conv', 'Conv2d_0') and mods[-2] in (
      'downsamplers_0', 'upsamplers_0'):
    mods[-2:] = [f'{mods[-2]}_conv']
  leaf = parts[-1]
  if leaf == 'weight':
    if mods == ['time_proj']:
      leaf = 'weight'
    elif ndim in (2, 4) and mods != ['class_embedding']:
      leaf = 'kernel'
    elif ndim == 2:
      leaf = 'embedding'
    else:
      leaf = 'scale'
  return tuple(mods) + (leaf,)


def convert(state: dict) -> dict:
  """diffusers' state dict (numpy) -> the port's params tree."""
  tree = {}
  for key, value in state.items():
    value = np.asarray(value, np.float32)
    path = flax_path(key, value.ndim)
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    if path[-1] in node:
      raise DiffusersImportError(f'two weights map to {"/".join(path)}')
    node[path[-1]] = value
  return {'params': tree}


def check_against(params, abstract, where: str):
  """Every weight config.json builds, present and of its shape; one line
  naming the first that is not."""
  have = param_files.flatten(params)
  want = param_files.flatten(abstract)
  for k in sorted(set(have) | set(want)):
    if k not in have:
      raise DiffusersImportError(f'{where} lacks weight {k} (shape '
                                 f'{tuple(want[k].shape)}) that config.json '
                                 'builds')
    if k not in want:
      raise DiffusersImportError(f'{where} has weight {k} (shape '
                                 f'{have[k].shape}) that config.json does not '
                                 'build')
    if tuple(have[k].shape) != tuple(want[k].shape):
      raise DiffusersImportError(f'{where}: weight {k} has shape '
                                 f'{have[k].shape}, config.json builds '
                                 f'{tuple(want[k].shape)}')


def abstract_params(module):
  c = module.cfg
  size = c.sample_size or 2 ** len(c.block_out_channels)
  hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  x = jnp.zeros((1,) + hw + (c.in_channels,))
  if isinstance(module, UNet2DCondition):
    cond = (None if c.time_cond_proj_dim is None
            else jnp.zeros((1, c.time_cond_proj_dim)))
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), x,
                          jnp.zeros((1,)), jnp.zeros((1, 1, c.context_dim)),
                          None, cond)
  labels = (jnp.zeros((1,), jnp.int32)
            if c.num_class_embeds is not None or c.class_embed_type else None)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x,
                        jnp.zeros((1,)), labels)


def from_pretrained(directory: str):
  """(module, params) of a diffusers UNet2DModel (UNet2D) or
  UNet2DConditionModel (UNet2DCondition) directory."""
  c = read_any_config(directory)
  module = UNet2DCondition(c) if isinstance(c, CondUNetConfig) else UNet2D(c)
  params = load_weights(directory)
  check_against(params, abstract_params(module), os.path.join(directory,
                                                       WEIGHTS_FILE))
  return module, jax.tree.map(jnp.asarray, params)


def load_weights(directory: str) -> dict:
  """The port's params tree (numpy) of a diffusers model directory's
  safetensors weights, checked for finite values."""
  path = os.path.join(directory, WEIGHTS_FILE)
  if not fs.isfile(path):
    raise DiffusersImportError(f'{directory} has no {WEIGHTS_FILE} (the '
                               'safetensors weights)')
  from safetensors.numpy import load_file
  try:
    state = load_file(path)
  except Exception as e:  # the package raises several types
    raise DiffusersImportError(f'{path} is not a readable safetensors file '
                               f'({type(e).__name__}: {e})') from None
  param_files.check_values(state, path, DiffusersImportError)
  return convert(state)
