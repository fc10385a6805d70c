"""A diffusers AutoencoderKL as a run's latent space.

`latent.vae_checkpoint=DIR`, where DIR is an AutoencoderKL directory or a
pipeline whose vae/ holds one, makes the run latent in that VAE's space,
the way diffusers' pipelines are:

  latent = (encoder mean - shift_factor) * scaling_factor
  image  = decode(latent / scaling_factor + shift_factor)

Images are in [-1, 1] on both sides (mmd_jax's data range is the VAE's).
The posterior mean, not a draw, is the latent: the encoded data are then a
function of the data, so they are encoded once and cached in the VAE's
stage directory. A teacher trained on posterior draws sees slightly wider
latents than the mean's; say so where it matters (docs/import.md).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from mmd_jax.models import diffusers_unet as du
from mmd_jax.models import diffusers_vae
from mmd_jax.models.diffusers_import import COPY_DIR
from mmd_jax.numerics.space import LatentSpace
from mmd_jax.run.checks import ConfigError
from mmd_jax.workdir import fs

CLASS_NAME = 'AutoencoderKL'


def vae_dir(path: str) -> str | None:
  """The AutoencoderKL directory `path` names (itself, or a pipeline's
  vae/); None when it is not a diffusers VAE (an mmd_jax VAE stage)."""
  if not path or not fs.isdir(path) or fs.exists(
      os.path.join(path, 'stage.json')):
    return None
  if fs.isfile(os.path.join(path, 'model_index.json')):
    sub = os.path.join(path, 'vae')
    if not fs.isdir(sub):
      raise ConfigError(f'config.latent.vae_checkpoint: the pipeline {path} '
                        'has no vae/ directory')
    return sub
  cfg = os.path.join(path, 'config.json')
  if not fs.isfile(cfg):
    return None
  try:
    d = du.read_json(cfg)
  except du.DiffusersImportError as e:
    raise ConfigError(f'config.latent.vae_checkpoint: {e}') from None
  return path if d.get('_class_name') == CLASS_NAME else None


def module_of(directory: str) -> diffusers_vae.AutoencoderKL:
  """The module a VAE directory (or a stage's kept copy) describes."""
  path = os.path.join(directory, 'config.json')
  try:
    return diffusers_vae.AutoencoderKL(diffusers_vae.config_from_dict(
        du.read_json(path), path))
  except du.DiffusersImportError as e:
    raise ConfigError(f'config.latent.vae_checkpoint: {e}') from None


def downsampling(module) -> int:
  return 2 ** (len(module.cfg.block_out_channels) - 1)


def latent_shape(module, example_shape) -> tuple:
  f = downsampling(module)
  h, w = example_shape[:2]
  return (h // f, w // f, module.cfg.latent_channels)


def check_data(module, data):
  """One line naming latent.vae_checkpoint when the data cannot go through
  this VAE."""
  c, shape = module.cfg, tuple(data.example_shape)
  where = 'config.latent.vae_checkpoint'
  if len(shape) != 3:
    raise ConfigError(f'{where}: a diffusers VAE encodes images (H, W, C); '
                      f'{data.name} has examples of shape {shape}')
  if shape[2] != c.in_channels:
    raise ConfigError(f'{where}: the VAE takes {c.in_channels}-channel '
                      f'images; {data.name} has {shape[2]} channels')
  f = downsampling(module)
  if shape[0] % f or shape[1] % f:
    raise ConfigError(f'{where}: the VAE downsamples by {f}; {data.name}\'s '
                      f'{shape[0]}x{shape[1]} images are not a multiple of it')


def keep_config(source: str, stage_dir: str):
  """The VAE's config.json beside its imported weights, so that the
  workdir reads its space without the source directory."""
  d = os.path.join(stage_dir, COPY_DIR)
  fs.makedirs(d)
  fs.write_text(os.path.join(d, 'config.json'),
                fs.read_text(os.path.join(source, 'config.json')))
  fs.write_text(os.path.join(d, 'import.json'), json.dumps(
      {'imported_from': fs.absolute(source)}, indent=2))


def kept_or_source(stage_dir: str, source: str) -> str:
  kept = os.path.join(stage_dir, COPY_DIR)
  return kept if fs.isfile(os.path.join(kept, 'config.json')) else source


def space(module, params, example_shape, cache_dir: str = '') -> LatentSpace:
  """The LatentSpace of this VAE for data of `example_shape`; `params`
  None: abstract (describe)."""
  c = module.cfg
  shift = float(c.shift_factor or 0.0)
  shape = latent_shape(module, example_shape)
  encoder = jax.jit(lambda p, x: module.apply(p, x, method=module.encode)[0]
                    - shift)
  decoder = jax.jit(lambda p, z: module.apply(p, z + shift,
                                              method=module.decode))
  # Activations at full resolution bound a call: 1000 rows of 8x8 digits,
  # 4 of Stable Diffusion's 512 px images.
  rows = max(1, min(1000, (1 << 20) // int(np.prod(example_shape[:2]))))
  return LatentSpace(f'sdvae{"x".join(map(str, shape))}',
                     int(np.prod(shape)), encoder, decoder, params,
                     float(c.scaling_factor), latent_shape=shape,
                     cache_dir=cache_dir, batch_size=rows)
