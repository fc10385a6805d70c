"""Variance-preserving diffusion math (docs/ALGORITHMS.md §1) as small pure
functions.

Everything is written in terms of the log-SNR `lam = log(alpha^2 / sigma^2)`,
so `alpha^2 = sigmoid(lam)` and `sigma^2 = sigmoid(-lam)`. Time `t` runs from
0 (data) to 1 (noise); a schedule maps `t` to `lam`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ----------------------------------------------------------------------------
# Schedules: t -> log-SNR.


def cosine_logsnr(t, logsnr_min=-15.0, logsnr_max=15.0):
  """lam(t) = -2 log tan(pi t / 2), clipped to [logsnr_min, logsnr_max]."""
  t = jnp.asarray(t, jnp.float32)
  # Clip t first so tan() never sees 0 or pi/2 (log(0) would give inf grads).
  t_min = math.atan(math.exp(-0.5 * logsnr_max)) * 2 / math.pi
  t_max = math.atan(math.exp(-0.5 * logsnr_min)) * 2 / math.pi
  t = jnp.clip(t, t_min, t_max)
  return -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t))


def shifted_cosine_logsnr(t, resolution, base_resolution=64,
                          logsnr_min=-15.0, logsnr_max=15.0):
  """Simple diffusion's resolution shift: cosine + 2 log(base / resolution)."""
  shift = 2.0 * math.log(base_resolution / resolution)
  lam = cosine_logsnr(t, logsnr_min - shift, logsnr_max - shift) + shift
  return lam


def edm_logsnr(t, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """Karras et al.'s sigma(u) spacing, as log-SNR: lam = -2 log sigma_EDM."""
  t = jnp.asarray(t, jnp.float32)
  inv = 1.0 / rho
  sigma = (sigma_min**inv + t * (sigma_max**inv - sigma_min**inv))**rho
  return -2.0 * jnp.log(sigma)


DDPM_BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')


@functools.lru_cache(maxsize=8)
def ddpm_logsnr_table(beta_schedule: str = 'linear', beta_start: float = 1e-4,
                      beta_end: float = 0.02, num_timesteps: int = 1000):
  """lam_n = log(abar_n / (1 - abar_n)), n = 0..T-1, of a discrete DDPM
  schedule (diffusers' DDPMScheduler betas; abar_n = prod_{i<=n} (1 -
  beta_i)). Decreasing in n. Cached (every trace of the schedule reads it),
  so read-only."""
  n = num_timesteps
  if beta_schedule == 'linear':
    betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
  elif beta_schedule == 'scaled_linear':
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n,
                        dtype=np.float64)**2
  elif beta_schedule == 'squaredcos_cap_v2':
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2)**2
    betas = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999)
                      for i in range(n)])
  else:
    raise ValueError(f'unknown DDPM beta schedule {beta_schedule!r}; known: '
                     f'{DDPM_BETA_SCHEDULES}')
  abar = np.cumprod(1.0 - betas)
  table = np.log(abar) - np.log1p(-abar)
  table.flags.writeable = False
  return table


def ddpm_logsnr(t, table):
  """A discrete schedule read at continuous t: the log-SNR interpolated
  linearly between the steps, step n sitting at t = n / (T - 1)."""
  t = jnp.asarray(t, jnp.float32)
  pos = jnp.clip(t, 0.0, 1.0) * (len(table) - 1)
  return jnp.interp(pos, jnp.arange(len(table), dtype=jnp.float32),
                    jnp.asarray(table, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A named t -> log-SNR map. Hashable, so it can be a static jit argument."""
  name: str = 'cosine'
  logsnr_min: float = -15.0
  logsnr_max: float = 15.0
  resolution: int = 64
  base_resolution: int = 64
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0
  # 'ddpm': an imported discrete teacher's betas (diffusers' names).
  beta_schedule: str = 'linear'
  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_timesteps: int = 1000

  def __call__(self, t) -> Array:
    if self.name == 'cosine':
      return cosine_logsnr(t, self.logsnr_min, self.logsnr_max)
    if self.name == 'shifted_cosine':
      return shifted_cosine_logsnr(t, self.resolution, self.base_resolution,
                                   self.logsnr_min, self.logsnr_max)
    if self.name == 'edm':
      return edm_logsnr(t, self.sigma_min, self.sigma_max, self.rho)
    if self.name == 'shifted_edm':  # EDM spacing, simple diffusion's shift
      return (edm_logsnr(t, self.sigma_min, self.sigma_max, self.rho)
              + 2.0 * math.log(self.base_resolution / self.resolution))
    if self.name == 'ddpm':
      return ddpm_logsnr(t, self.logsnr_table())
    raise ValueError(f'unknown schedule {self.name!r}')


  def logsnr_table(self):
    """The discrete log-SNRs of a 'ddpm' schedule, n = 0..T-1."""
    return ddpm_logsnr_table(self.beta_schedule, self.beta_start,
                             self.beta_end, self.num_timesteps)


SCHEDULES = ('cosine', 'shifted_cosine', 'edm', 'shifted_edm')


def schedule_from_config(cfg) -> Schedule:
  """Builds a Schedule from `config.diffusion`."""
  return Schedule(
      name=cfg.schedule, logsnr_min=float(cfg.logsnr_min),
      logsnr_max=float(cfg.logsnr_max), resolution=int(cfg.resolution),
      base_resolution=int(cfg.base_resolution))


def alpha_sigma(lam):
  """(alpha, sigma) from log-SNR; exact at lam = +-inf."""
  return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def _bcast(a, x):
  """Reshapes a per-example array (B,) to broadcast against x (B, ...)."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


# ----------------------------------------------------------------------------
# Forward process and conversions between predictions.


def diffuse(x, lam, eps):
  """z_t = alpha x + sigma eps."""
  alpha, sigma = alpha_sigma(_bcast(lam, x))
  return alpha * x + sigma * eps


def x_from_v(z, v, lam):
  alpha, sigma = alpha_sigma(_bcast(lam, z))
  return alpha * z - sigma * v


def v_from_x(z, x, lam):
  alpha, sigma = alpha_sigma(_bcast(lam, z))
  # v = alpha eps - sigma x, with eps = (z - alpha x) / sigma:
  # v = (alpha z - x) / sigma, written to stay finite as sigma -> 0.
  return (alpha * z - x) / sigma


def x_from_eps(z, eps, lam):
  alpha, sigma = alpha_sigma(_bcast(lam, z))
  return (z - sigma * eps) / alpha


def eps_from_x(z, x, lam):
  alpha, sigma = alpha_sigma(_bcast(lam, z))
  return (z - alpha * x) / sigma


def ddim_step(z_t, x_hat, lam_t, lam_s):
  """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat."""
  alpha_s, sigma_s = alpha_sigma(_bcast(lam_s, z_t))
  return alpha_s * x_hat + sigma_s * eps_from_x(z_t, x_hat, lam_t)


def v_from_eps(z, eps, lam):
  return v_from_x(z, x_from_eps(z, eps, lam), lam)


def eps_from_v(z, v, lam):
  alpha, sigma = alpha_sigma(_bcast(lam, z))
  return sigma * z + alpha * v


PARAMETERIZATIONS = ('v', 'eps', 'x')


def x_from_output(parameterization: str, z, out, lam):
  """Turns a network output into the x-prediction."""
  if parameterization == 'v':
    return x_from_v(z, out, lam)
  if parameterization == 'eps':
    return x_from_eps(z, out, lam)
  if parameterization == 'x':
    return out
  raise ValueError(f'unknown parameterization {parameterization!r}')


# ----------------------------------------------------------------------------
# Posterior q(z_s | z_t, x) for s < t.


def posterior_from_alphas(z_t, x, alpha_t, sigma_t, alpha_s, sigma_s):
  """Mean and variance of q(z_s|z_t,x), exactly as Eq. 2 of MM writes them.

  Valid at alpha_t = 0 (then N(alpha_s x, sigma_s^2)) and at sigma_s = 0
  (then x itself), which the log-SNR form cannot express.
  """
  alpha_ts = alpha_t / alpha_s
  var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
  mean = (alpha_ts * sigma_s**2 / sigma_t**2) * z_t + (
      alpha_s * var_ts / sigma_t**2) * x
  var = var_ts * sigma_s**2 / sigma_t**2
  return mean, var


def posterior(z_t, x, lam_t, lam_s):
  """Mean and variance of q(z_s|z_t,x) from log-SNRs (lam_s > lam_t).

  Uses sigma_{t|s}^2 / sigma_t^2 = 1 - exp(lam_t - lam_s) (via expm1), which
  stays accurate when s and t are close.
  """
  lam_t = _bcast(lam_t, z_t)
  lam_s = _bcast(lam_s, z_t)
  alpha_t, sigma_t = alpha_sigma(lam_t)
  alpha_s, sigma_s = alpha_sigma(lam_s)
  frac = -jnp.expm1(lam_t - lam_s)  # sigma_{t|s}^2 / sigma_t^2
  coef_z = (alpha_t / alpha_s) * (sigma_s**2 / sigma_t**2)
  mean = coef_z * z_t + alpha_s * frac * x
  var = sigma_s**2 * frac
  return mean, var


def sample_posterior(key, z_t, x, lam_t, lam_s):
  mean, var = posterior(z_t, x, lam_t, lam_s)
  return mean + jnp.sqrt(var) * jax.random.normal(key, z_t.shape, z_t.dtype)


# ----------------------------------------------------------------------------
# Loss weights, written for the x-space loss w(lam) ||x - x_hat||^2.

LOSS_WEIGHTS = ('v', 'edm', 'flat', 'snr')


def loss_weight(name: str, lam, sigma_data: float = 0.5):
  if name == 'v':  # 1 + SNR: the v-prediction MSE.
    return 1.0 + jnp.exp(lam)
  if name == 'edm':  # SNR + 1/sigma_data^2: EDM's lambda(sigma) in x-space.
    return jnp.exp(lam) + 1.0 / sigma_data**2
  if name == 'snr':  # the eps-prediction MSE.
    return jnp.exp(lam)
  if name == 'flat':
    return jnp.ones_like(lam)
  raise ValueError(f'unknown loss weight {name!r}')


Denoiser = Callable[[Array, Array], Array]  # (z, lam) -> x_hat
