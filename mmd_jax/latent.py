"""Latent diffusion: the teacher and every student run in a VAE's latent
space, and evaluation decodes their samples.

A run is latent when `config.latent.vae_checkpoint` names a VAE stage
directory, or when `config.stages` has a `vae` stage and a diffusion stage
(the VAE trained in the same workdir). The latent of an example is the
encoder's mean, multiplied by one global factor so that the latents' standard
deviation is `teacher.sigma_data` (the scale the diffusion settings assume);
the factor is recomputed from the VAE and the training data, so it needs no
file of its own. Decoding divides by it and takes the decoder's mean image.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmd_jax.data import Dataset
from mmd_jax.methods import vae

DIFFUSION_STAGES = ('teacher', 'mm_alternating', 'mm_parameter', 'emd',
                    'diff_instruct')


def is_latent(config) -> bool:
  lat = config.get('latent')
  if lat is not None and lat.vae_checkpoint:
    return True
  return 'vae' in config.stages and any(
      s in DIFFUSION_STAGES for s in config.stages)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  module: object
  params: object
  likelihood: str
  scale: float            # latent = scale * encoder mean

  def encode(self, x, batch_size: int = 1000) -> np.ndarray:
    f = _encode_fn(self.module)
    return np.concatenate([np.asarray(f(self.params, jnp.asarray(
        x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    ) * self.scale

  def decode(self, latents, batch_size: int = 1000) -> np.ndarray:
    f = _decode_fn(self.module, self.likelihood)
    z = np.asarray(latents, np.float32) / self.scale
    return np.concatenate([np.asarray(f(self.params, jnp.asarray(
        z[i:i + batch_size]))) for i in range(0, len(z), batch_size)])


# Jitted once per VAE: evaluation decodes every row's samples, and periodic
# quality decodes every few thousand steps.
@functools.lru_cache(maxsize=8)
def _encode_fn(module):
  return jax.jit(lambda p, x: vae.encode_mean(module, p, x))


@functools.lru_cache(maxsize=8)
def _decode_fn(module, likelihood: str):
  return jax.jit(lambda p, z: vae.decode_mean(module, p, z, likelihood))


def vae_dir(config, workdir: str) -> str:
  lat = config.get('latent')
  return (lat.vae_checkpoint if lat is not None and lat.vae_checkpoint
          else os.path.join(workdir, 'vae'))


def load_space(config, workdir: str, dataset, mesh) -> LatentSpace:
  from mmd_jax import vae_stages
  from mmd_jax.config_check import ConfigError
  stage_dir = vae_dir(config, workdir)
  meta_path = os.path.join(stage_dir, 'stage.json')
  if not os.path.exists(meta_path):
    raise ConfigError(f'config.latent.vae_checkpoint: {stage_dir} holds no '
                      "VAE (no stage.json); train one with stage 'vae'")
  with open(meta_path) as f:
    have = json.load(f).get('setting')
  want = vae_stages.setting(config)
  if have != want:
    raise ConfigError(f'config.vae: the VAE in {stage_dir} was trained with '
                      f'{have}, the config says {want}')
  state = vae_stages.load_vae(config, workdir, dataset, mesh,
                              stage_dir=stage_dir)
  raw = LatentSpace(state.module, state.params, config.vae.likelihood, 1.0)
  std = float(np.std(raw.encode(dataset.train['x'])))
  scale = config.teacher.sigma_data / max(std, 1e-8)
  logging.info('latent space: VAE %s, latent dim %d, encoder-mean std %.4f, '
               'scale %.4f', stage_dir, config.vae.latent_dim, std, scale)
  return dataclasses.replace(raw, scale=scale)


def latent_dataset(dataset, space: LatentSpace) -> Dataset:
  """The dataset as the diffusion stages see it: (N, latent_dim) points with
  the same labels and split."""
  def enc(split):
    if split is None:
      return None
    out = {'x': space.encode(split['x']).astype(np.float32)}
    if 'label' in split:
      out['label'] = split['label']
    return out
  if not isinstance(dataset.train, dict):
    from mmd_jax.config_check import ConfigError
    raise ConfigError('config.latent: latent diffusion needs in-memory data '
                      f'(digits, points); {dataset.name} is streamed')
  return Dataset(f'{dataset.name}/vae{space.module.latent_dim}', 'points',
                 enc(dataset.train), enc(dataset.test),
                 num_classes=dataset.num_classes)
