"""Samplers over a denoiser `(z, lam) -> x_hat`: ancestral (Algorithm 1), DDIM.

Samplers take the denoiser as a closure, so one sampler serves the teacher,
every student, guided and unguided models alike. `k` is static: each step
count compiles once.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmd_jax.numerics import diffusion

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def cfg_combine(x_cond, x_uncond, guidance):
  """Classifier-free guidance: (1 + w) x(z, c) - w x(z, null)."""
  return (1.0 + guidance) * x_cond - guidance * x_uncond


def time_grid(i, k, time_power: float = 1.0):
  """(t, s) of step i of k: (1 - i/k, 1 - (i+1)/k), each raised to
  `time_power` (1: uniform in t; > 1: the steps crowd at low noise and the
  first one lands lower)."""
  t = 1.0 - i / k
  s = t - 1.0 / k
  if time_power != 1.0:
    t, s = t ** time_power, jnp.maximum(s, 0.0) ** time_power
  return t, s


def _grid(schedule, i, k, batch, time_power=1.0):
  t, s = time_grid(i, k, time_power)
  lam_t = jnp.full((batch,), schedule(t))
  lam_s = jnp.full((batch,), schedule(s))
  return lam_t, lam_s


def ancestral_sample(key, denoise: Denoiser, schedule, shape, k: int,
                     time_power: float = 1.0):
  """Algorithm 1: k steps t = 1, (k-1)/k, ..., 1/k (`time_grid`); returns
  the last x_hat."""
  init_key, loop_key = jax.random.split(key)
  z = jax.random.normal(init_key, shape, jnp.float32)

  def body(carry, i):
    z, _ = carry
    lam_t, lam_s = _grid(schedule, i, k, shape[0], time_power)
    x_hat = denoise(z, lam_t)
    z_s = diffusion.sample_posterior(
        jax.random.fold_in(loop_key, i), z, x_hat, lam_t, lam_s)
    return (z_s, x_hat), None

  (_, x_hat), _ = jax.lax.scan(body, (z, jnp.zeros(shape, jnp.float32)),
                               jnp.arange(k))
  return x_hat


def ddim_sample(key, denoise: Denoiser, schedule, shape, k: int,
                time_power: float = 1.0):
  """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat."""
  z = jax.random.normal(key, shape, jnp.float32)

  def body(carry, i):
    z, _ = carry
    lam_t, lam_s = _grid(schedule, i, k, shape[0], time_power)
    x_hat = denoise(z, lam_t)
    return (diffusion.ddim_step(z, x_hat, lam_t, lam_s), x_hat), None

  (_, x_hat), _ = jax.lax.scan(body, (z, jnp.zeros(shape, jnp.float32)),
                               jnp.arange(k))
  return x_hat


SAMPLERS = {'ancestral': ancestral_sample, 'ddim': ddim_sample}


def make_denoiser(module, params, parameterization: str, labels=None,
                  null=None, guidance: float = 0.0):
  """Wraps `module.apply` as (z, lam) -> x_hat, with optional CFG.

  `labels` is the condition (class labels or a caption pytree, batch
  first) and `null` the unconditional one, batched alike. With guidance
  != 0 the conditional and null calls share one batched forward pass.
  """

  def net(z, lam, lab):
    out = module.apply(params, z, lam, lab, train=False)
    return diffusion.x_from_output(parameterization, z, out, lam)

  def denoise(z, lam):
    if labels is None or guidance == 0.0:
      return net(z, lam, labels)
    both = net(jnp.concatenate([z, z]), jnp.concatenate([lam, lam]),
               jax.tree.map(lambda c, u: jnp.concatenate([c, u]),
                            labels, null))
    x_c, x_u = jnp.split(both, 2)
    return cfg_combine(x_c, x_u, guidance)

  return denoise
