"""Networks trained elsewhere, read through mmd_jax's denoiser interface
`module(z, lam, labels, train) -> output` (docs/ALGORITHMS.md §8).

- `DDPMDenoiser`: a discrete-time network (diffusers' DDPMScheduler: integer
  timestep input, eps or v output). Its forward process is already ours,
  `z = sqrt(abar_n) x + sqrt(1 - abar_n) eps`, so `z` goes in unchanged and
  only the time is mapped: log-SNR -> the fractional step n at which the
  schedule's log-SNR, interpolated between steps, equals it.
- `EDMDenoiser`: Karras et al.'s preconditioning around a raw network F,
  `D(x; s) = c_skip x + c_out F(c_in x; c_noise)` on the variance-exploding
  `x = z / alpha` with `s = exp(-lam / 2)` and `c_noise = noise_scale *
  ln s` (EDM: 1/4); it returns the x-prediction.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmd_jax.numerics import diffusion


class DDPMDenoiser(nn.Module):
  net: nn.Module   # (sample, timestep, labels or a caption, train=...)
  schedule: diffusion.Schedule     # the 'ddpm' schedule the net was trained on
  # An unconditional net gets no labels, though the run's data may have them.
  conditional: bool = False

  def __call__(self, z, lam, labels=None, train: bool = False):
    table = jnp.asarray(self.schedule.logsnr_table(), jnp.float32)
    steps = jnp.arange(len(table), dtype=jnp.float32)
    # The table decreases in n; interp wants increasing abscissae.
    n = jnp.interp(lam.astype(jnp.float32), table[::-1], steps[::-1])
    return self.net(z, n, labels if self.conditional else None, train=train)


class EDMDenoiser(nn.Module):
  net: nn.Module
  sigma_data: float = 0.5
  noise_scale: float = 0.25
  conditional: bool = False

  def __call__(self, z, lam, labels=None, train: bool = False):
    shape = (-1,) + (1,) * (z.ndim - 1)
    alpha, _ = diffusion.alpha_sigma(lam)
    sigma = jnp.exp(-0.5 * lam)
    x = z / alpha.reshape(shape)
    sd2, s2 = self.sigma_data**2, jnp.square(sigma)
    c_in = 1.0 / jnp.sqrt(s2 + sd2)
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * self.sigma_data / jnp.sqrt(s2 + sd2)
    f = self.net(x * c_in.reshape(shape), self.noise_scale * jnp.log(sigma),
                 labels if self.conditional else None, train=train)
    return c_skip.reshape(shape) * x + c_out.reshape(shape) * f
