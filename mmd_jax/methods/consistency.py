"""Consistency distillation (Song et al. 2023), docs/ALGORITHMS.md §4b.

A consistency function f(z, lam) maps any point of a teacher ODE
trajectory to its end. Trained against an EMA copy of itself at the
adjacent point one teacher ODE step reaches; pure and jittable:

  state = consistency.init(key, teacher_params, spec, hp, tx)
  state, metrics = consistency.step(state, batch, key)
  x = consistency.sample(spec, params, key, shape, k, labels, hp)

Noise levels are read in the variance-exploding view of the VP process:
x_ve = z / alpha = x + sigma_ve eps with sigma_ve = exp(-lam / 2).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmd_jax.numerics import diffusion, sampling
from mmd_jax.blocks import guard, optim
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.blocks.microbatch import ALL, Rows, accumulate

sg = jax.lax.stop_gradient

SOLVERS = ('heun', 'ddim')


@dataclasses.dataclass(frozen=True)
class CDHParams:
  num_points: int = 40        # N: the discretisation of [sigma_min, sigma_max]
  ema_decay: float = 0.95     # mu of the target network
  solver: str = 'heun'        # the teacher's ODE step: heun | ddim (Euler)
  huber_c: float = 0.00054    # pseudo-Huber c = huber_c * sqrt(dim)
  rho: float = 7.0            # EDM's spacing of the N points in sigma
  # The noise range in the VE view [paper: EDM's], inside the schedule's.
  sigma_min: float = 0.002
  sigma_max: float = 80.0
  guidance: float = 0.0       # CFG weight inside the teacher
  grad_accum_steps: int = 1
  # The weights samples come from: an EMA of the online weights with this
  # decay, bias-corrected (it starts at zero, not at the teacher); 0: the
  # online weights themselves.
  sample_ema_decay: float = 0.999


@flax.struct.dataclass
class CDState:
  step: jax.Array
  teacher_params: dict   # frozen
  student_params: dict   # eta
  ema_params: dict       # eta^-, the target network
  opt_state: optax.OptState
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: CDHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    return self.student_params


@flax.struct.dataclass
class CDEMAState(CDState):
  """With hparams.sample_ema_decay: the state and the EMA that samples
  (before bias correction) with its update count. A subclass, so that a
  state without one keeps the fields (and the checkpoints) it always
  had."""
  sample_ema: Any = None
  sample_updates: Any = None

  @property
  def sampling_params(self):
    return optim.debiased_ema(self.sample_ema, self.sample_updates,
                              self.hparams.sample_ema_decay,
                              self.student_params)


def init(key, teacher_params, spec: DenoiserSpec, hp: CDHParams,
         tx: optax.GradientTransformation, batch=None) -> CDState:
  del batch
  copy = lambda t: jax.tree.map(jnp.copy, t)
  student = copy(teacher_params)
  cls, ema = CDState, {}
  if hp.sample_ema_decay:
    cls, ema = CDEMAState, dict(
        sample_ema=jax.tree.map(jnp.zeros_like, student),
        sample_updates=jnp.zeros((), jnp.int32))
  return cls(step=jnp.zeros((), jnp.int32),
             teacher_params=copy(teacher_params), student_params=student,
             ema_params=copy(teacher_params), opt_state=tx.init(student),
             rng=key, spec=spec, hparams=hp, tx=tx, **ema)


# ----------------------------------------------------------------------------
# Noise levels.


def sigma_ve(lam):
  return jnp.exp(-0.5 * lam)


def logsnr_ends(spec, hp: CDHParams):
  """(lam_boundary, lam_top): [sigma_min, sigma_max] as log-SNRs, inside the
  schedule's own range. Every consumer computes them here, so the boundary
  is the same float everywhere and c_out vanishes there exactly."""
  lam_boundary = jnp.minimum(spec.schedule(jnp.float32(0.0)),
                             jnp.float32(-2.0 * math.log(hp.sigma_min)))
  lam_top = jnp.maximum(spec.schedule(jnp.float32(1.0)),
                        jnp.float32(-2.0 * math.log(hp.sigma_max)))
  return lam_boundary, lam_top


def grid_logsnr(spec, hp: CDHParams):
  """N log-SNRs, descending from the boundary (index 0) to the noisiest,
  spaced as EDM spaces sigma (rho = 7)."""
  lam_boundary, lam_top = logsnr_ends(spec, hp)
  inv = 1.0 / hp.rho
  lo, hi = sigma_ve(lam_boundary) ** inv, sigma_ve(lam_top) ** inv
  u = jnp.arange(hp.num_points, dtype=jnp.float32) / (hp.num_points - 1)
  lam = -2.0 * hp.rho * jnp.log(lo + u * (hi - lo))
  return lam.at[0].set(lam_boundary).at[-1].set(lam_top)


# ----------------------------------------------------------------------------
# The consistency function.


def consistency_fn(spec, hp: CDHParams, params, z, lam, labels=None):
  """f(z, lam) = c_skip x_ve + c_out F, F the network's EDM-form output.

  c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) /
  sqrt(sd^2 + s^2): exactly x_ve at s = s_min. F is what an EDM network
  would output for our denoiser x_hat = c_skip' x_ve + c_out' F (EDM's own
  c_skip' = sd^2/(s^2 + sd^2), c_out' = s sd/sqrt(s^2 + sd^2)), so a
  student starting as the teacher starts as its denoiser wherever s >>
  s_min.
  """
  s_min = sigma_ve(logsnr_ends(spec, hp)[0])
  b = lambda a: diffusion._bcast(a, z)
  alpha, _ = diffusion.alpha_sigma(b(lam))
  s = sigma_ve(b(lam))
  sd = spec.sigma_data
  x_ve = z / alpha
  x_hat = spec.x_hat(params, z, lam, labels)
  c_skip_edm = sd**2 / (s**2 + sd**2)
  c_out_edm = s * sd / jnp.sqrt(s**2 + sd**2)
  c_skip = sd**2 / ((s - s_min) ** 2 + sd**2)
  c_out = sd * (s - s_min) / jnp.sqrt(sd**2 + s**2)
  return c_skip * x_ve + (c_out / c_out_edm) * (x_hat - c_skip_edm * x_ve)


def teacher_ode_step(teacher, z, lam_from, lam_to, solver: str):
  """One probability-flow ODE step of `teacher(z, lam) -> x_hat` from
  lam_from to lam_to (cleaner), in the VE view: Euler (= DDIM) or Heun."""
  b = lambda a: diffusion._bcast(a, z)
  a_from, _ = diffusion.alpha_sigma(b(lam_from))
  a_to, _ = diffusion.alpha_sigma(b(lam_to))
  s_from, s_to = sigma_ve(b(lam_from)), sigma_ve(b(lam_to))
  x_ve = z / a_from
  d1 = (x_ve - teacher(z, lam_from)) / s_from
  x_euler = x_ve + (s_to - s_from) * d1
  if solver == 'ddim':
    return a_to * x_euler
  d2 = (x_euler - teacher(a_to * x_euler, lam_to)) / s_to
  return a_to * (x_ve + (s_to - s_from) * 0.5 * (d1 + d2))


def pseudo_huber(a, b, c_scale: float):
  """sqrt(||a - b||^2 + c^2) - c per example, c = c_scale sqrt(dim)."""
  d = (a - b).reshape(a.shape[0], -1)
  c = c_scale * jnp.sqrt(float(d.shape[1]))
  return jnp.sqrt(jnp.sum(jnp.square(d), -1) + c * c) - c


def cd_target(spec, teacher_params, ema_params, z_next, lam_next, lam_n,
              labels, hp: CDHParams):
  """sg(f_ema(z_hat_n, lam_n)), z_hat_n one teacher ODE step from z_next."""
  teacher = spec.denoiser(teacher_params,
                          labels if spec.conditioned else None, hp.guidance)
  z_n = teacher_ode_step(teacher, z_next, lam_next, lam_n, hp.solver)
  return sg(consistency_fn(spec, hp, ema_params, sg(z_n), lam_n, labels))


def loss_fn(spec, params, teacher_params, ema_params, x, labels, key,
            hp: CDHParams, rows: Rows = ALL):
  k_n, k_eps = jax.random.split(key)
  grid = grid_logsnr(spec, hp)
  # n uniform over the N - 1 adjacent pairs (grid[n + 1] noisier).
  n = jnp.floor(rows.uniform(k_n, (x.shape[0],)) * (hp.num_points - 1))
  n = jnp.minimum(n.astype(jnp.int32), hp.num_points - 2)
  lam_n, lam_next = grid[n], grid[n + 1]
  z_next = diffusion.diffuse(x, lam_next, rows.normal(k_eps, x.shape))
  target = cd_target(spec, teacher_params, ema_params, z_next, lam_next,
                     lam_n, labels, hp)
  pred = consistency_fn(spec, hp, params, z_next, lam_next, labels)
  return jnp.mean(pseudo_huber(pred, target, hp.huber_c))


def step(state: CDState, batch, key):
  key = jax.random.fold_in(key, state.step)
  spec, hp = state.spec, state.hparams

  def grads_of(mb, rows):
    labels = spec.cond_of(mb)
    loss, g = jax.value_and_grad(
        lambda p: loss_fn(spec, p, state.teacher_params, state.ema_params,
                          mb['x'], labels, key, hp, rows))(state.student_params)
    return g, loss

  g, loss = accumulate(grads_of, dict(batch), hp.grad_accum_steps)
  grad_norm = optax.tree.norm(g)

  def apply(state, g):
    params, opt, _ = optim.update(state.tx, g, state.opt_state,
                                  state.student_params, state.step)
    ema = optax.incremental_update(params, state.ema_params,
                                   1.0 - hp.ema_decay)
    new = state.replace(student_params=params, ema_params=ema,
                        opt_state=opt)
    if hp.sample_ema_decay:
      sample_ema, n = optim.ema_update(state.sample_ema, params,
                                       state.sample_updates,
                                       hp.sample_ema_decay)
      new = new.replace(sample_ema=sample_ema, sample_updates=n)
    return new, {}

  new, _, ok = guard.apply_if_finite((loss, grad_norm), apply, state, g)
  return new.replace(step=state.step + 1), {
      'loss': loss, 'grad_norm': grad_norm, 'finite': ok}


def sample(spec, hp: CDHParams, params, key, shape, k: int, labels=None,
           time_power: float = 1.0):
  """Multistep consistency sampling: x = f(z, sigma_max) with z ~ N(0, I)
  read as the VP point at sigma_max [paper: x_T ~ N(0, T^2 I) in the VE
  view], then for t = (k-1)/k, ..., 1/k (Algorithm 1's grid, each t raised
  to `time_power`, clipped to the trained range): z_t ~ q(z_t | x),
  x = f(z_t, t). The noise is drawn as the samplers draw theirs (same key,
  same z)."""
  init_key, loop_key = jax.random.split(key)
  z = jax.random.normal(init_key, shape, jnp.float32)
  lam_boundary, lam_top = logsnr_ends(spec, hp)
  full = lambda lam: jnp.full((shape[0],), lam, jnp.float32)
  x = consistency_fn(spec, hp, params, z, full(lam_top), labels)
  for i in range(1, k):
    t, _ = sampling.time_grid(i, k, time_power)
    lam = full(jnp.clip(spec.schedule(t), lam_top, lam_boundary))
    eps = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
    x = consistency_fn(spec, hp, params, diffusion.diffuse(x, lam, eps), lam,
                       labels)
  return x
