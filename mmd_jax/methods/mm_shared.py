"""The pieces both moment-matching algorithms share (moment_matching.py):
hyperparameters, time draws, weightings, the student's rollout and
re-noising, the teacher's prediction, and the k-step student sampler.
Every public name here is re-exported by `moment_matching`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmd_jax.numerics import diffusion
from mmd_jax.blocks.microbatch import ALL, Rows

sg = jax.lax.stop_gradient

WEIGHTINGS = ('v', 'edm', 'flat', 'snr', 'dmd')
RENOISE = ('conditional', 'marginal')


@dataclasses.dataclass(frozen=True)
class MMHParams:
  k: int = 8
  weighting: str = 'v'          # w(s): v | edm | flat | snr | dmd
  renoise: str = 'conditional'  # q(z_s|z_t, x~) (paper) or marginal q(z_s|x~)
  guidance: float = 0.0         # CFG weight, used only inside the teacher
  s_range: str = 'full'         # full: s in [0, 1]; grid: s in [0, 1-1/k]
  grad_accum_steps: int = 1     # micro-batches per step (microbatch.py)
  # k = 1 only: the student is EMD's generator form, the network read at
  # log-SNR k1_logsnr on pure noise (t = 1, s over [0, 1]); False: the
  # network at t = 1 (log-SNR lambda_min), which barely reads its input.
  k1_generator: bool = True
  k1_logsnr: float = 0.0
  # Algorithm 2 only: auxiliary-model updates per student update, and the
  # decay of a bias-corrected EMA of the student that samples (0: the
  # student itself).
  aux_updates: int = 1
  student_ema: float = 0.0

  @property
  def generator(self) -> bool:
    return self.k == 1 and self.k1_generator


S_RANGES = ('auto', 'grid', 'full')


def sample_times(key, batch: int, k: int, s_range: str = 'full',
                 rows: Rows = ALL):
  """delta ~ U[0, 1/k], t = min(s + delta, 1), with s ~ U[0, 1] ('full',
  the default, as both public reimplementations draw it: the clip puts
  part of the batch at t = 1, where sampling starts) or s ~ U[0, 1 - 1/k]
  ('grid': the clip never binds; 'auto' is the old default, grid for
  k >= 2). docs/ALGORITHMS.md §2 has the measurements behind the default.

  k = 1 always draws the full range: there the grid range is the single
  point s = 0, where z_s = x~ and both denoisers return x~, so the gradient
  vanishes (measured: grad norm 3e-6 on toy2d).
  """
  k_s, k_d = jax.random.split(key)
  full = s_range == 'full' or k == 1
  s = rows.uniform(k_s, (batch,)) * (1.0 if full else 1.0 - 1.0 / k)
  t = jnp.minimum(s + rows.uniform(k_d, (batch,)) / k, 1.0)
  return s, t


def weight(name: str, lam_s, sigma_data: float, x_student=None,
           x_teacher=None):
  """w(s). 'dmd' is DMD's per-sample normaliser 1 / mean|x~ - g_teacher|."""
  if name == 'dmd':
    err = jnp.abs(x_student - x_teacher).reshape(x_student.shape[0], -1)
    return sg(1.0 / (jnp.mean(err, axis=-1) + 1e-4))
  return diffusion.loss_weight(name, lam_s, sigma_data)


def _renoise(key, hp: MMHParams, z_t, x_tilde, lam_t, lam_s,
             rows: Rows = ALL):
  """z_s from the student's x~ (no gradient flows through z_s)."""
  x_tilde = sg(x_tilde)
  noise = rows.normal(key, x_tilde.shape, x_tilde.dtype)
  if hp.renoise == 'conditional':
    mean, var = diffusion.posterior(z_t, x_tilde, lam_t, lam_s)
    return sg(mean + jnp.sqrt(var) * noise)
  return sg(diffusion.diffuse(x_tilde, lam_s, noise))


def _teacher_x(spec, teacher_params, z, lam, labels, guidance):
  """The teacher's x-prediction, with CFG when asked (teacher only)."""
  den = spec.denoiser(teacher_params, labels if spec.conditioned else None,
                      guidance)
  return den(z, lam)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _per_example_mean(a):
  return jnp.mean(a.reshape(a.shape[0], -1), axis=-1)


@dataclasses.dataclass
class _Draw:
  """One batch's student rollout: z_t, x~ (with its VJP), z_s, weights."""
  lam_s: jax.Array
  z_s: jax.Array
  x_tilde: jax.Array
  student_vjp: object
  labels: object
  z_t: jax.Array | None = None
  lam_t: jax.Array | None = None


def _draw(key, spec, student_params, x, labels, hp: MMHParams,
          rows: Rows = ALL, net=None):
  """With `net(params, z, lam)` given, `student_vjp` is its VJP in all three
  arguments (returning three cotangents); else in the params only.

  The one-step generator form (hp.generator) reads the student at the fixed
  log-SNR hp.k1_logsnr on pure noise z_1 (t = 1: no data in z_t), s over
  the full range.
  """
  k_time, k_eps, k_renoise = jax.random.split(key, 3)
  s, t = sample_times(k_time, x.shape[0], hp.k, hp.s_range, rows)
  if hp.generator:
    t = jnp.ones_like(t)
  lam_s, lam_t = spec.schedule(s), spec.schedule(t)
  noise = rows.normal(k_eps, x.shape)
  if hp.generator:
    z_t = noise
    lam_net = jnp.full_like(lam_t, hp.k1_logsnr)
  else:
    z_t = diffusion.diffuse(x, lam_t, noise)
    lam_net = lam_t
  if net is None:
    x_tilde, vjp = jax.vjp(lambda p: spec.x_hat(p, z_t, lam_net, labels),
                           student_params)
  else:
    x_tilde, vjp = jax.vjp(net, student_params, z_t, lam_net)
  z_s = _renoise(k_renoise, hp, z_t, x_tilde, lam_t, lam_s, rows)
  return _Draw(lam_s, z_s, x_tilde, vjp, labels, z_t, lam_t)


def _pick_vjp(pred, vjp_true, vjp_false):
  """The VJP whose residuals are vjp_true's where `pred`, else vjp_false's.
  Both must come from `jax.vjp` of one function on arguments of one shape,
  so that their residuals correspond leaf by leaf."""
  leaves_t, _ = jax.tree.flatten(vjp_true)
  leaves_f, treedef = jax.tree.flatten(vjp_false)
  shapes = lambda ls: [(l.shape, l.dtype) for l in ls]
  if shapes(leaves_t) != shapes(leaves_f):
    raise ValueError('the two VJPs do not have matching residuals')
  return jax.tree.unflatten(treedef, [jnp.where(pred, a, b) for a, b
                                      in zip(leaves_t, leaves_f)])


def student_sample(spec, params, key, shape, k: int, labels=None,
                   hp: MMHParams | None = None, sampler: str = 'ancestral',
                   time_power: float = 1.0):
  """A k-step student's samples: Algorithm 1 (or DDIM) over the time grid
  of `time_power` (numerics/sampling.py), or for the one-step generator
  form one network call at hp.k1_logsnr on z_1, drawn as the samplers draw
  it (same key, same noise)."""
  if hp is not None and k == 1 and hp.generator:
    return spec.sample_at_logsnr(params, key, shape, hp.k1_logsnr, labels)
  return spec.sample(params, key, shape, k, labels=labels, sampler=sampler,
                     time_power=time_power)
