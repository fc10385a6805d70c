"""Moment matching distillation (Salimans et al. 2024), docs/ALGORITHMS.md
§2-3.

Two pure, jittable algorithms that turn a teacher into a k-step student:

  state = moment_matching.init_alternating(key, teacher_params, spec, hp, tx, batch)
  state, metrics = moment_matching.alternating_step(state, batch, key)

  state = moment_matching.init_parameter(key, teacher_params, precond, spec, hp, tx, batch)
  state, metrics = moment_matching.parameter_step(state, batch, key)

Student, auxiliary model and teacher are parameter sets of one module.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmd_jax.blocks import guard, optim
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.methods import teacher as teacher_lib
from mmd_jax.blocks.microbatch import accumulate
# The shared pieces live in mm_shared; every name is public here too.
from mmd_jax.methods.mm_shared import (  # noqa: F401
    RENOISE, S_RANGES, WEIGHTINGS, MMHParams, _copy, _draw, _Draw,
    _per_example_mean, _pick_vjp, _renoise, _teacher_x, sample_times, sg,
    student_sample, weight)


def mm_optimizer(learning_rate, warmup_steps, total_steps, grad_clip=1.0,
                 decay: bool = True):
  """The paper's optimiser: Adam(b1=0, b2=0.99, eps=1e-12), clipping at 1,
  warm-up then linear decay to 0 (`decay=False`: constant after the
  warm-up), on the global step: Algorithm 2's two
  networks each update every other step, and both follow one schedule
  (warm-up ends at global step `warmup_steps`, the rate is 0 at the last
  step). Any optax transformation works too; it then counts its own
  updates."""
  tx, _ = optim.global_step_adam(learning_rate, warmup_steps, total_steps,
                                 grad_clip, b1=0.0, b2=0.99, eps=1e-12,
                                 decay=decay)
  return tx


# ----------------------------------------------------------------------------
# Algorithm 2: alternating moment matching.


@flax.struct.dataclass
class AlternatingState:
  step: jax.Array
  teacher_params: dict   # frozen
  student_params: dict   # eta
  aux_params: dict       # phi
  student_opt: optax.OptState
  aux_opt: optax.OptState
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: MMHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    return self.student_params


@flax.struct.dataclass
class AlternatingEMAState(AlternatingState):
  """With hparams.student_ema: the state and an EMA of the student, which
  samples. A subclass, so that a state without one keeps the fields (and
  the checkpoints) it always had."""
  student_ema: Any = None
  student_ema_updates: Any = None

  @property
  def sampling_params(self):
    return optim.debiased_ema(self.student_ema, self.student_ema_updates,
                              self.hparams.student_ema, self.student_params)


def init_alternating(key, teacher_params, spec: DenoiserSpec, hp: MMHParams,
                     tx: optax.GradientTransformation, batch=None):
  del batch  # shapes come from the teacher
  # Copies throughout: steps donate their state, which must never delete
  # the caller's teacher arrays.
  student, aux = _copy(teacher_params), _copy(teacher_params)
  cls, ema = AlternatingState, {}
  if hp.student_ema:
    cls, ema = AlternatingEMAState, dict(
        student_ema=jax.tree.map(jnp.zeros_like, student),
        student_ema_updates=jnp.zeros((), jnp.int32))
  return cls(
      step=jnp.zeros((), jnp.int32), teacher_params=_copy(teacher_params),
      student_params=student, aux_params=aux, student_opt=tx.init(student),
      aux_opt=tx.init(aux), rng=key, spec=spec, hparams=hp, tx=tx, **ema)


def _alternating_grads(state: AlternatingState, key, is_aux, mb, rows):
  """(gradient of whichever network trains, metrics) on one micro-batch."""
  spec, hp = state.spec, state.hparams
  labels = spec.cond_of(mb)
  # One function object for both networks: their VJPs then have the same
  # structure, and their residuals can be selected leaf by leaf.
  net = lambda p, z, lam: spec.x_hat(p, z, lam, labels)
  d = _draw(key, spec, state.student_params, mb['x'], labels, hp, rows,
            net=net)
  x_teacher = sg(_teacher_x(spec, state.teacher_params, d.z_s, d.lam_s,
                            labels, hp.guidance))
  w = weight(hp.weighting, d.lam_s, spec.sigma_data, d.x_tilde, x_teacher)
  x_tilde = sg(d.x_tilde)
  x_aux, aux_vjp = jax.vjp(net, state.aux_params, d.z_s, d.lam_s)
  x_aux = sg(x_aux)
  n, dim = x_tilde.shape[0], x_tilde[0].size
  wb = w.reshape((-1,) + (1,) * (x_tilde.ndim - 1))
  # Aux: L(phi) = mean_b w_b mean_d [(x~ - g_phi)^2 + (g_theta - g_phi)^2].
  aux_loss = jnp.mean(w * (_per_example_mean(jnp.square(x_tilde - x_aux)) +
                           _per_example_mean(jnp.square(x_teacher - x_aux))))
  aux_ct = -2.0 * wb * ((x_tilde - x_aux) + (x_teacher - x_aux)) / (n * dim)
  # Student: L(eta) = mean_b w_b mean_d x~ * sg(g_phi - g_theta).
  diff = x_aux - x_teacher
  student_loss = jnp.mean(w * _per_example_mean(x_tilde * diff))
  student_ct = wb * diff / (n * dim)
  vjp = _pick_vjp(is_aux, aux_vjp, d.student_vjp)
  g, _, _ = vjp(jnp.where(is_aux, aux_ct, student_ct))
  # Moment gap: how far the student's E[x|z_s] is from the teacher's.
  gap = jnp.mean(_per_example_mean(jnp.square(diff)))
  return g, {'loss': jnp.where(is_aux, aux_loss, student_loss),
             'moment_gap': gap}


def _alternating_update(state: AlternatingState, g, check, is_aux):
  """(new state, rate, finite): one optimiser update, of whichever network
  this step trains, under the non-finite guard.

  One guarded cond per network, which updates it in place or passes it
  through whole (guard.apply_if_finite's `when`). Selecting between the
  two networks' updates read both networks where it wrote one, so XLA
  copied the whole trained state (params and Adam moments of both, 63 MiB
  on digits) twice: into the guard's cond and out of it, every step.
  Both networks use the same optax transformation; the rate comes from
  the global step, so both follow one schedule although each updates
  every other step.
  """
  def update(net, g):
    params, opt, rate = optim.update(state.tx, g, net[1], net[0], state.step)
    return (params, opt), rate

  (aux, aux_opt), aux_rate, ok = guard.apply_if_finite(
      check, update, (state.aux_params, state.aux_opt), g, when=is_aux)
  (student, student_opt), student_rate, _ = guard.apply_if_finite(
      check, update, (state.student_params, state.student_opt), g,
      when=~is_aux)
  new = state.replace(aux_params=aux, aux_opt=aux_opt,
                      student_params=student, student_opt=student_opt)
  if state.hparams.student_ema:
    ema, n = optim.ema_update(state.student_ema, student,
                              state.student_ema_updates,
                              state.hparams.student_ema, when=~is_aux & ok)
    new = new.replace(student_ema=ema, student_ema_updates=n)
  return new, jnp.where(is_aux, aux_rate, student_rate), ok


def alternating_step(state: AlternatingState, batch, key):
  """Even steps update the auxiliary denoiser phi, odd steps the student eta.

  The gradient runs as one program with no branch (a `lax.cond` between
  the two gradients ran 1.5x slower on CPU than either branch alone). The
  student (at z_t) and the aux net (at z_s) run forward once each, keeping
  their VJP residuals; the step's parity selects residuals and cotangent,
  and one backward pass gives the gradient of whichever network trains.
  Five network passes per step against the teacher step's three. The
  gradient is averaged over micro-batches; the update writes only the
  network it trains (`_alternating_update`).
  """
  key = jax.random.fold_in(key, state.step)
  # aux_updates = r: steps 0..r-1 of every r + 1 update the auxiliary model.
  r = state.hparams.aux_updates
  is_aux = state.step % (r + 1) < r
  g, metrics = accumulate(
      lambda mb, rows: _alternating_grads(state, key, is_aux, mb, rows),
      dict(batch), state.hparams.grad_accum_steps)
  grad_norm = optax.tree.norm(g)
  new, rate, ok = _alternating_update(state, g, (metrics['loss'], grad_norm),
                                      is_aux)
  metrics.update(grad_norm=grad_norm, learning_rate=rate,
                 aux_step=is_aux.astype(jnp.float32), finite=ok)
  return new.replace(step=state.step + 1), metrics


# ----------------------------------------------------------------------------
# Algorithm 3: moment matching in parameter space.


@flax.struct.dataclass
class ParameterState:
  step: jax.Array
  teacher_params: dict   # frozen
  precond: dict          # frozen Lambda = 1 / (sqrt(v_hat) + eps)
  student_params: dict
  student_opt: optax.OptState
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: MMHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    return self.student_params


def preconditioner(nu, count, b2: float, eps: float = 1e-8):
  """Lambda = diag(1 / (sqrt(v_hat) + eps)) from Adam's raw nu and count."""
  return preconditioner_from_v_hat(teacher_lib.bias_corrected(nu, count, b2),
                                   eps)


def preconditioner_from_v_hat(v_hat, eps: float = 1e-8):
  return jax.tree.map(lambda v: 1.0 / (jnp.sqrt(v) + eps), v_hat)


def init_parameter(key, teacher_params, precond, spec: DenoiserSpec,
                   hp: MMHParams, tx: optax.GradientTransformation,
                   batch=None):
  del batch
  student = _copy(teacher_params)
  return ParameterState(
      step=jnp.zeros((), jnp.int32), teacher_params=_copy(teacher_params),
      precond=_copy(precond), student_params=student, student_opt=tx.init(student),
      rng=key, spec=spec, hparams=hp, tx=tx)


def _guided(spec, teacher_params, x_unguided, d: _Draw, guidance):
  """The guided teacher's x at z_s, reusing the unguided pass when there is
  no guidance (the usual case: one teacher pass instead of two)."""
  if guidance == 0.0 or not spec.conditioned:
    return sg(x_unguided)
  return sg(_teacher_x(spec, teacher_params, d.z_s, d.lam_s, d.labels,
                       guidance))


def _float32(tree):
  """The teacher as differentiated here: a bfloat16 frozen copy
  (teacher.frozen_dtype) would give bfloat16 gradients and tangents."""
  return jax.tree.map(
      lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _teacher_grad(spec, teacher_params, d: _Draw, hp: MMHParams):
  """grad_theta of mean_b w_b mean_d ||x~ - g_theta(z_s)||^2 at sg(x~).

  Straight-through guidance: the residual uses the guided teacher, the
  backward pass the unguided one. One teacher forward (the VJP's) serves
  both when there is no guidance.
  """
  x_unguided, vjp = jax.vjp(
      lambda th: spec.x_hat(th, d.z_s, d.lam_s, d.labels),
      _float32(teacher_params))
  x_guided = _guided(spec, teacher_params, x_unguided, d, hp.guidance)
  w = weight(hp.weighting, d.lam_s, spec.sigma_data, d.x_tilde, x_guided)
  resid = x_guided - sg(d.x_tilde)
  n, dim = resid.shape[0], resid[0].size
  ct = 2.0 * w.reshape((-1,) + (1,) * (resid.ndim - 1)) * resid / (n * dim)
  (g,) = vjp(ct)
  return g


def _batch_a_terms(spec, teacher_params, nu, d_a: _Draw, hp: MMHParams):
  """(w_A, sg(J nu) at batch A, monitor) for nu = Lambda grad L(B).

  The monitor 1/2 grad L(A)^T Lambda grad L(B) is read off the JVP for
  free: grad L(A)^T nu = mean_b 2 w_b mean_d (g_theta(z_A) - x~_A) J nu.
  The JVP's primal is the unguided teacher at z_A.
  """
  # J nu at batch A (unguided teacher: straight-through).
  x_unguided, j_nu = jax.jvp(
      lambda th: spec.x_hat(th, d_a.z_s, d_a.lam_s, d_a.labels),
      (_float32(teacher_params),), (nu,))
  j_nu = sg(j_nu)
  x_teacher_a = _guided(spec, teacher_params, x_unguided, d_a, hp.guidance)
  w_a = weight(hp.weighting, d_a.lam_s, spec.sigma_data, d_a.x_tilde,
               x_teacher_a)
  monitor = 0.5 * jnp.mean(w_a * _per_example_mean(
      2.0 * (x_teacher_a - sg(d_a.x_tilde)) * j_nu))
  return w_a, j_nu, monitor


def parameter_losses(spec, teacher_params, precond, d_a: _Draw, d_b: _Draw,
                     hp: MMHParams):
  """Surrogate-loss terms for eta on batch A given batch B: (w_A, J nu,
  monitor)."""
  g_b = _teacher_grad(spec, teacher_params, d_b, hp)
  nu = jax.tree.map(lambda l, g: l * g, precond, g_b)
  return _batch_a_terms(spec, teacher_params, nu, d_a, hp)


def parameter_step(state: ParameterState, batch, key):
  """One student update from two independent half-batches A and B.

  With micro-batches, two scans: the teacher gradient on B is a mean over
  B, needed whole before any of A's rows can use it."""
  key = jax.random.fold_in(key, state.step)
  k_a, k_b = jax.random.split(key)
  spec, hp = state.spec, state.hparams
  # Even/odd examples: each device's shard holds both halves, so the split
  # needs no communication.
  halves = jax.tree.map(
      lambda v: v.reshape((v.shape[0] // 2, 2) + v.shape[1:]), dict(batch))
  batch_a = jax.tree.map(lambda v: v[:, 0], halves)
  batch_b = jax.tree.map(lambda v: v[:, 1], halves)

  def labels_of(mb):
    return spec.cond_of(mb)

  def teacher_grad_b(mb, rows):
    d_b = _draw(k_b, spec, state.student_params, mb['x'], labels_of(mb), hp,
                rows)
    return _teacher_grad(spec, state.teacher_params, d_b, hp)

  g_b = accumulate(teacher_grad_b, batch_b, hp.grad_accum_steps)
  nu = jax.tree.map(lambda l, g: l * g, state.precond, g_b)

  def student_grad_a(mb, rows):
    d_a = _draw(k_a, spec, state.student_params, mb['x'], labels_of(mb), hp,
                rows)
    w_a, j_nu, monitor = _batch_a_terms(spec, state.teacher_params, nu, d_a,
                                        hp)
    # L(eta) = -mean_b w_b mean_d x~_A * sg(J nu); its cotangent:
    n, dim = j_nu.shape[0], j_nu[0].size
    ct = -(w_a.reshape((-1,) + (1,) * (j_nu.ndim - 1)) * j_nu) / (n * dim)
    (g,) = d_a.student_vjp(ct)
    loss = -jnp.mean(w_a * _per_example_mean(sg(d_a.x_tilde) * j_nu))
    return g, {'loss': loss, 'monitor': monitor}

  g, metrics = accumulate(student_grad_a, batch_a, hp.grad_accum_steps)
  grad_norm = optax.tree.norm(g)

  def apply(state, g):
    params, opt, rate = optim.update(state.tx, g, state.student_opt,
                                     state.student_params, state.step)
    return state.replace(student_params=params, student_opt=opt), rate

  new, rate, ok = guard.apply_if_finite((metrics['loss'], grad_norm), apply,
                                        state, g)
  return new.replace(step=state.step + 1), {
      **metrics, 'grad_norm': grad_norm, 'learning_rate': rate,
      'finite': ok}


