"""EMD's E-step (docs/ALGORITHMS.md §4): the generator g_theta and the
Langevin chain on pi_t(x_t, z) ~ p_teacher,t(x_t) p_theta(z | x_t).

methods/emd.py builds the M-step and the training step on these and
re-exports them. `hp` below is always an emd.EMDHParams; it goes unannotated
because naming it here would import emd.py, which imports this module.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from mmd_jax.numerics import analytic, diffusion, mcmc, quadrature
from mmd_jax.device import loops
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.blocks.microbatch import ALL, Rows

sg = jax.lax.stop_gradient


def generator(spec: DenoiserSpec, params, z, labels, logsnr: float):
  """g_theta(z): the network's x-prediction at the fixed log-SNR lambda*."""
  lam = jnp.full((z.shape[0],), logsnr, jnp.float32).astype(z.dtype)
  return spec.x_hat(params, z, lam, labels)


def generator_sample(spec: DenoiserSpec, params, key, shape, logsnr: float,
                     labels=None):
  """One network call on z drawn as the samplers draw z_1."""
  return spec.sample_at_logsnr(params, key, shape, logsnr, labels)


def per_example(a, x):
  """A per-example array `a` shaped to broadcast against the batch `x`."""
  return a.reshape((-1,) + (1,) * (x.ndim - 1))


def teacher_denoiser(spec, hp, teacher_params, labels):
  """(x_t, lam) -> the teacher's x-prediction: the network (with CFG), or
  the data mixture's exact posterior mean."""
  if hp.teacher == 'analytic':
    return lambda x_t, lam: analytic.x_hat(hp.mixture, x_t, lam, labels)
  return spec.denoiser(teacher_params, labels, hp.guidance)


def score_difference(spec, teacher_params, score_params, x_t, lam, labels,
                     guidance: float = 0.0, teacher_x=None, student_x=None):
  """d = s_T - s_S = (alpha / sigma^2) (x_T - x_S), from x-predictions so the
  large x_t / sigma^2 terms cancel before rounding. `teacher_x` overrides
  the teacher network (teacher_denoiser), `student_x` the score net."""
  a, s = diffusion.alpha_sigma(per_example(lam, x_t))
  den = teacher_x or spec.denoiser(teacher_params, labels, guidance)
  x_teacher = den(x_t, lam)
  if student_x is None:
    x_student = spec.x_hat(score_params, x_t, lam, labels)
  else:
    x_student = student_x(x_t, lam)
  return sg((a / (s * s)) * (x_teacher - x_student))


@flax.struct.dataclass
class EStepResult:
  z: jax.Array          # z_K
  eps: jax.Array        # eps_K, implied by (x_t, z) in the centred chain
  cancel: jax.Array     # c: injected eps-noise still present in eps_K


def _step(x, pull, h, n, integrator: str, scale=1.0, centre=0.0):
  """One step on a target whose log-density gradient is
  pull - (x - centre) / scale^2. Euler: Langevin with step h scale^2. OU:
  the Gaussian part exactly, x <- centre + e^-h (x - centre) + (1 - e^-h)
  scale^2 pull + scale sqrt(1 - e^-2h) n, which has no step-size bias on
  that part at any h. Returns (new x, the noise's coefficient, the decay)
  for the noise bookkeeping."""
  v = scale * scale
  if integrator == 'ou':
    decay = jnp.exp(-h)
    noise = jnp.sqrt(-jnp.expm1(-2.0 * h))
    return (centre + decay * (x - centre) + (1.0 - decay) * v * pull
            + scale * noise * n), noise, decay
  grad = pull - (x - centre) / v
  return mcmc.langevin_update(x, grad, h * v, n), jnp.sqrt(2.0 * h), 1.0 - h


def langevin(hp, gen, diff, z, eps, lam, key,
             g0=None, rows: Rows = ALL) -> EStepResult:
  """K Langevin steps on pi_t(x_t, z) from the generator's own joint (z, eps).

  `gen(z) -> g(z)` and `diff(x_t) -> s_T - s_S` are closures, so the chain can
  be checked against analytic Gaussians. The injected noise is followed
  through the linear part of the eps drift, c <- (1 - gamma_eps) c +
  sqrt(2 gamma_eps) n: earlier noise decays, so a plain sum would subtract
  noise that is no longer there.
  """
  a, s = diffusion.alpha_sigma(per_example(lam, z))
  ge, gz = hp.gamma_eps, hp.gamma_z
  centred = hp.parameterization == 'x'
  g0 = gen(z) if g0 is None else g0

  def body(carry, k):
    u, z, c = carry            # u: eps (non-centred) or x_t (centred)
    if gz > 0:
      g, vjp = jax.vjp(gen, z)
    else:
      g = g0
    n_key, nz_key = jax.random.split(jax.random.fold_in(key, k))
    n = rows.normal(n_key, z.shape, z.dtype)
    x_t = u if centred else a * g + s * u
    d = diff(x_t)
    if centred:
      # A gamma_eps sigma^2 step in x is the eps chain's step at fixed z.
      u_new, noise, decay = _step(u, d, ge, n, hp.integrator, s, a * g)
    else:
      u_new, noise, decay = _step(u, s * d, ge, n, hp.integrator)
    c_new = decay * c + noise * n
    if gz > 0:
      # Non-centred: alpha J^T d. Centred: the likelihood's pull,
      # (alpha / sigma^2) J^T (x_t - alpha g).
      ct = a * (u - a * g) / (s * s) if centred else a * d
      (jt,) = vjp(sg(ct))
      nz = rows.normal(nz_key, z.shape, z.dtype)
      z = _step(z, jt, gz, nz, hp.integrator)[0]
    return (u_new, z, c_new), None

  u0 = a * g0 + s * eps if centred else eps
  (u, z, c), _ = loops.scan(
      body, (u0, z, jnp.zeros_like(z)), jnp.arange(hp.langevin_steps))
  if centred:
    g = gen(z) if gz > 0 else g0
    u = (u - a * g) / s
  return EStepResult(z=sg(z), eps=sg(u), cancel=sg(c))


def e_step(spec, hp, teacher_params, score_params,
           generator_params, z, eps, lam, labels, key,
           g0=None, rows: Rows = ALL) -> EStepResult:
  """The Langevin E-step with the networks: generator, teacher, score."""
  def gen(zz):
    return generator(spec, generator_params, zz, labels, hp.logsnr_generator)

  teacher_x = teacher_denoiser(spec, hp, teacher_params, labels)
  student_x = None
  if hp.fake_guidance and labels is not None:
    student_x = spec.denoiser(score_params, labels, hp.fake_guidance)
  if hp.fake_score == 'quadrature':
    grid, logw = quadrature.z_grid(quadrature.TRAIN_GRID,
                                   quadrature.TRAIN_EXTENT)
    g_grid = sg(generator(spec, generator_params, jnp.asarray(grid), None,
                          hp.logsnr_generator))

    def student_x(x_t, lam):
      return quadrature.denoise(g_grid, jnp.asarray(logw), x_t, lam)

  def diff(x_t):
    return score_difference(spec, teacher_params, score_params, x_t, lam,
                            labels, teacher_x=teacher_x, student_x=student_x)

  return langevin(hp, gen, diff, z, eps, lam, key, g0, rows)
