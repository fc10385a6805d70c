"""Progressive distillation (Salimans & Ho 2022), docs/ALGORITHMS.md §4b.

One round: a student that takes `k` deterministic DDIM steps learns to
land where its teacher lands in `2k`. Rounds chain (the previous round's
student is the next round's teacher); each is one pure, jittable step:

  state = progressive.init(key, round_teacher_params, spec, hp, tx)
  state, metrics = progressive.step(state, batch, key)

Teacher and student are parameter sets of one module.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmd_jax.numerics import diffusion
from mmd_jax.blocks import guard, optim
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.blocks.microbatch import ALL, Rows, accumulate

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class PDHParams:
  k: int                      # the student's DDIM steps (its teacher: 2k)
  guidance: float = 0.0       # CFG weight inside the round's teacher
  grad_accum_steps: int = 1


@flax.struct.dataclass
class PDState:
  step: jax.Array
  teacher_params: dict     # frozen: this round's teacher
  student_params: dict
  opt_state: optax.OptState
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: PDHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    return self.student_params


def init(key, teacher_params, spec: DenoiserSpec, hp: PDHParams,
         tx: optax.GradientTransformation, batch=None) -> PDState:
  del batch
  # Copies: the step donates its state, which must not delete the caller's
  # (the previous round's) arrays.
  student = jax.tree.map(jnp.copy, teacher_params)
  return PDState(step=jnp.zeros((), jnp.int32),
                 teacher_params=jax.tree.map(jnp.copy, teacher_params),
                 student_params=student, opt_state=tx.init(student), rng=key,
                 spec=spec, hparams=hp, tx=tx)


def target(teacher, z_t, t, k: int, schedule):
  """The x the student must predict at (z_t, t): two DDIM steps of
  `teacher(z, lam)` from t to t - 1/(2k) to t - 1/k land on z'', and the
  target is the x~ whose one DDIM step from t lands on z'' too.

  x~ = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t).
  The schedule's log-SNR is finite at t = 0, so the last step's sigma'' is
  small but not 0, and the formula holds there as well.
  """
  n = 2 * k
  lam_t = schedule(t)
  lam_1 = schedule(t - 1.0 / n)
  lam_2 = schedule(t - 2.0 / n)
  z_1 = diffusion.ddim_step(z_t, teacher(z_t, lam_t), lam_t, lam_1)
  z_2 = diffusion.ddim_step(z_1, teacher(z_1, lam_1), lam_1, lam_2)
  b = lambda a: diffusion._bcast(a, z_t)
  alpha_t, sigma_t = diffusion.alpha_sigma(b(lam_t))
  alpha_2, sigma_2 = diffusion.alpha_sigma(b(lam_2))
  ratio = sigma_2 / sigma_t
  return sg((z_2 - ratio * z_t) / (alpha_2 - ratio * alpha_t))


def truncated_snr_weight(lam):
  """max(SNR, 1): the paper's x-space weight (truncated SNR)."""
  return jnp.maximum(jnp.exp(lam), 1.0)


def grid_times(key, batch: int, k: int, rows: Rows = ALL):
  """t uniform on the student's grid {1/k, 2/k, ..., 1}."""
  u = rows.uniform(key, (batch,))
  return (jnp.floor(u * k) + 1.0) / k


def loss_fn(spec, params, teacher_params, x, labels, key, hp: PDHParams,
            rows: Rows = ALL):
  k_t, k_eps = jax.random.split(key)
  t = grid_times(k_t, x.shape[0], hp.k, rows)
  lam_t = spec.schedule(t)
  z_t = diffusion.diffuse(x, lam_t, rows.normal(k_eps, x.shape))
  teacher = spec.denoiser(teacher_params,
                          labels if spec.conditioned else None, hp.guidance)
  x_target = target(teacher, z_t, t, hp.k, spec.schedule)
  x_hat = spec.x_hat(params, z_t, lam_t, labels)
  mse = jnp.mean(jnp.square(x_target - x_hat).reshape(x.shape[0], -1), -1)
  return jnp.mean(truncated_snr_weight(lam_t) * mse)


def step(state: PDState, batch, key):
  key = jax.random.fold_in(key, state.step)
  spec, hp = state.spec, state.hparams

  def grads_of(mb, rows):
    labels = spec.cond_of(mb)
    loss, g = jax.value_and_grad(
        lambda p: loss_fn(spec, p, state.teacher_params, mb['x'], labels, key,
                          hp, rows))(state.student_params)
    return g, loss

  g, loss = accumulate(grads_of, dict(batch), hp.grad_accum_steps)
  grad_norm = optax.tree.norm(g)

  def apply(state, g):
    params, opt, rate = optim.update(state.tx, g, state.opt_state,
                                     state.student_params, state.step)
    return state.replace(student_params=params, opt_state=opt), rate

  new, rate, ok = guard.apply_if_finite((loss, grad_norm), apply, state, g)
  return new.replace(step=state.step + 1), {
      'loss': loss, 'grad_norm': grad_norm, 'learning_rate': rate,
      'finite': ok}
