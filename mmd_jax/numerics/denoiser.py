"""A network plus how to read it as a denoiser. Shared by every method, so
teacher, student, auxiliary and score nets differ only in their params."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.numerics import diffusion, sampling
from mmd_jax.run.checks import ConfigError


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
  module: nn.Module
  schedule: diffusion.Schedule
  parameterization: str = 'v'
  num_classes: int = 0
  # The data's scale as the losses assume it (EDM's sigma_data): the 'edm'
  # weights and latent spaces' normalisation read it here.
  sigma_data: float = 0.5
  # False for a network with no unconditional input (an imported model
  # trained without label dropout): guidance is then refused, not run on
  # an untrained or out-of-range label embedding.
  has_null_label: bool = True

  @property
  def null_label(self) -> int:
    return self.num_classes

  def init_params(self, key, example_x):
    b = example_x.shape[0]
    labels = jnp.zeros((b,), jnp.int32) if self.num_classes else None
    return self.module.init({'params': key, 'dropout': key}, example_x,
                            jnp.zeros((b,)), labels, train=False)

  def x_hat(self, params, z, lam, labels=None, train=False, rng=None):
    rngs = {'dropout': rng} if (train and rng is not None) else None
    out = self.module.apply(params, z, lam, labels, train=train, rngs=rngs)
    return diffusion.x_from_output(self.parameterization, z, out, lam)

  def denoiser(self, params, labels=None, guidance: float = 0.0):
    if guidance and labels is not None and not self.has_null_label:
      raise ConfigError(
          f'classifier-free guidance {guidance} (distill.guidance, '
          f'eval.guidance or --guidance) needs an unconditional input, and '
          f'this teacher embeds only the data\'s {self.num_classes} classes '
          f'(no null label); set the guidance to 0')
    return sampling.make_denoiser(self.module, params, self.parameterization,
                                  labels, self.null_label, guidance)

  def sample_at_logsnr(self, params, key, shape, logsnr: float,
                       labels=None):
    """A one-step generator's samples: the x-prediction at a fixed log-SNR
    on z drawn exactly as the samplers draw z_1 (same key, same noise)."""
    z = jax.random.normal(jax.random.split(key)[0], shape, jnp.float32)
    lam = jnp.full((shape[0],), logsnr, jnp.float32)
    return self.x_hat(params, z, lam, labels)

  def sample(self, params, key, shape, k: int, labels=None,
             guidance: float = 0.0, sampler: str = 'ancestral'):
    den = self.denoiser(params, labels, guidance)
    return sampling.SAMPLERS[sampler](key, den, self.schedule, shape, k)


def spec_from_config(config, dataset, network=None) -> DenoiserSpec:
  """The run's denoiser on `dataset` (a Dataset or DataShape): the network
  of `config.model` (or `network`, a `stages.base.Network` that a method
  brings), the schedule of `config.diffusion` (or the network's), and the
  data scale `teacher.sigma_data` (a teacher key for compatibility: every
  method that reads the denoiser reads it from here)."""
  from mmd_jax.models import build_model
  schedule = diffusion.schedule_from_config(config.diffusion)
  if network is not None:
    num_classes = dataset.num_classes if network.conditional else 0
    return DenoiserSpec(
        module=network.module, schedule=network.schedule or schedule,
        parameterization=network.parameterization, num_classes=num_classes,
        sigma_data=float(config.teacher.sigma_data),
        has_null_label=network.null_label)
  num_classes = dataset.num_classes if config.model.conditional else 0
  return DenoiserSpec(
      module=build_model(config.model, num_classes), schedule=schedule,
      parameterization=config.model.parameterization,
      num_classes=num_classes, sigma_data=float(config.teacher.sigma_data))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
