"""A network plus how to read it as a denoiser. Shared by every method, so
teacher, student, auxiliary and score nets differ only in their params."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmd_jax.numerics import condition, diffusion, sampling
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
  # Caption conditioning (numerics/condition.py) instead of class labels.
  captions: condition.Captions | None = None

  @property
  def null_label(self) -> int:
    return self.num_classes

  @property
  def conditioned(self) -> bool:
    return bool(self.num_classes) or self.captions is not None

  @property
  def has_null(self) -> bool:
    if self.captions is not None:
      return self.captions.null is not None
    return self.has_null_label

  def cond_of(self, batch):
    """The batch's condition as this denoiser reads it (None if it is
    unconditional, whatever the batch carries)."""
    if self.captions is not None:
      return batch.get('cond')
    return batch.get('label') if self.num_classes else None

  def null_cond(self, cond):
    """The null condition, batched like `cond`."""
    if self.captions is not None:
      return self.captions.null_batch(condition.batch_size(cond))
    return jnp.full_like(cond, self.null_label)

  def drop_cond(self, key, cond, rate: float, rows):
    """Replaces a `rate` fraction of rows by the null condition (for
    classifier-free guidance); `rows` draws it per global row."""
    if cond is None or rate <= 0:
      return cond
    if self.captions is None:
      drop = rows.bernoulli(key, rate, cond.shape)
      return jnp.where(drop, self.null_label, cond)
    if self.captions.null is None:
      return cond
    drop = rows.bernoulli(key, rate, (condition.batch_size(cond),))
    return condition.where_rows(drop, self.null_cond(cond), cond)

  def example_cond(self, batch: int):
    if self.captions is not None:
      return self.captions.zeros(batch)
    return jnp.zeros((batch,), jnp.int32) if self.num_classes else None

  def init_params(self, key, example_x):
    b = example_x.shape[0]
    return self.module.init({'params': key, 'dropout': key}, example_x,
                            jnp.zeros((b,)), self.example_cond(b),
                            train=False)

  def x_hat(self, params, z, lam, labels=None, train=False, rng=None):
    rngs = {'dropout': rng} if (train and rng is not None) else None
    out = self.module.apply(params, z, lam, labels, train=train, rngs=rngs)
    return diffusion.x_from_output(self.parameterization, z, out, lam)

  def denoiser(self, params, labels=None, guidance: float = 0.0,
               null=None):
    """(z, lam) -> x_hat under condition `labels` (labels or a caption);
    with guidance, against `null` (default: the null condition; a negative
    caption may take its place)."""
    if guidance and labels is not None and null is None:
      if not self.has_null:
        what = ('its caption table has no null_emb' if self.captions
                else f'this teacher embeds only the data\'s '
                f'{self.num_classes} classes (no null label)')
        raise ConfigError(
            f'classifier-free guidance {guidance} (distill.guidance, '
            f'eval.guidance or --guidance) needs an unconditional input, '
            f'and {what}; set the guidance to 0')
      null = self.null_cond(labels)
    return sampling.make_denoiser(self.module, params, self.parameterization,
                                  labels, null, guidance)

  def sample_at_logsnr(self, params, key, shape, logsnr: float,
                       labels=None):
    """A one-step generator's samples: the x-prediction at a fixed log-SNR
    on z drawn exactly as the samplers draw z_1 (same key, same noise)."""
    z = jax.random.normal(jax.random.split(key)[0], shape, jnp.float32)
    lam = jnp.full((shape[0],), logsnr, jnp.float32)
    return self.x_hat(params, z, lam, labels)

  def sample(self, params, key, shape, k: int, labels=None,
             guidance: float = 0.0, sampler: str = 'ancestral', null=None,
             time_power: float = 1.0):
    den = self.denoiser(params, labels, guidance, null)
    return sampling.SAMPLERS[sampler](key, den, self.schedule, shape, k,
                                      time_power)


def spec_from_config(config, dataset, network=None) -> DenoiserSpec:
  """The run's denoiser on `dataset` (a Dataset or DataShape): the network
  of `config.model` (or `network`, a `stages.base.Network` that a method
  brings), the schedule of `config.diffusion` (or the network's), and the
  data scale `teacher.sigma_data` (a teacher key for compatibility: every
  method that reads the denoiser reads it from here)."""
  from mmd_jax.models import build_model
  schedule = diffusion.schedule_from_config(config.diffusion)
  conditional = network.conditional if network is not None \
      else config.model.conditional
  num_classes = dataset.num_classes if conditional else 0
  captions = getattr(dataset, 'caption_signature', None) if conditional \
      else None
  if network is not None:
    return DenoiserSpec(
        module=network.module, schedule=network.schedule or schedule,
        parameterization=network.parameterization, num_classes=num_classes,
        sigma_data=float(config.teacher.sigma_data),
        has_null_label=network.null_label, captions=captions)
  return DenoiserSpec(
      module=build_model(config.model, num_classes), schedule=schedule,
      parameterization=config.model.parameterization,
      num_classes=num_classes, sigma_data=float(config.teacher.sigma_data),
      captions=captions)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
