"""The many-step diffusion teacher: x-space loss w(lam) ||x - g(z_t)||^2.

Public, loop-free use:

  state = teacher.init(key, spec, hparams, tx, batch)
  state, metrics = teacher.step(state, batch, key)
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmd_jax.numerics import diffusion
from mmd_jax.blocks import guard
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.blocks.microbatch import ALL, Rows, accumulate
from mmd_jax.blocks.optim import make_optimizer  # noqa: F401 (public here too)


@dataclasses.dataclass(frozen=True)
class TeacherHParams:
  loss_weight: str = 'v'
  label_dropout: float = 0.1
  ema_decay: float = 0.999
  stratified_t: bool = True
  grad_accum_steps: int = 1   # micro-batches per step (microbatch.py)


@flax.struct.dataclass
class TeacherState:
  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: optax.OptState  # keeps Adam's nu: Algorithm 3 needs it.
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: TeacherHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    """What samples are drawn with: the EMA when there is one."""
    return self.ema_params if self.hparams.ema_decay > 0 else self.params


def init(key, spec: DenoiserSpec, hparams: TeacherHParams,
         tx: optax.GradientTransformation, batch) -> TeacherState:
  init_key, rng = jax.random.split(key)
  params = spec.init_params(init_key, batch['x'])
  # A real copy: the step donates the state, and aliased leaves would be
  # donated twice.
  ema = jax.tree.map(jnp.copy, params)
  return TeacherState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=ema, opt_state=tx.init(params), rng=rng,
                      spec=spec, hparams=hparams, tx=tx)


def sample_t(key, batch: int, stratified: bool, rows: Rows = ALL):
  """t ~ U[0, 1]; stratified: one shared offset, evenly spaced over the
  global batch (VDM's low-discrepancy sampler), which lowers the loss
  variance for free."""
  if not stratified:
    return rows.uniform(key, (batch,))
  u = jax.random.uniform(key, ())
  pos, total = rows.positions(batch)
  return jnp.mod(u + pos / total, 1.0)


def diffusion_loss(spec: DenoiserSpec, params, x, labels, key,
                   loss_weight: str, train: bool = True,
                   stratified_t: bool = False, rows: Rows = ALL):
  """E_t,eps w(lam_t) ||x - x_hat(z_t)||^2 with t ~ U[0, 1]. Mean over dims.
  (Dropout masks, if any, are drawn per micro-batch and device.)"""
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x.shape[0], stratified_t, rows)
  lam = spec.schedule(t)
  z = diffusion.diffuse(x, lam, rows.normal(k_eps, x.shape))
  x_hat = spec.x_hat(params, z, lam, labels, train=train,
                     rng=rows.key(k_drop))
  w = diffusion.loss_weight(loss_weight, lam, spec.sigma_data)
  mse = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=-1)
  return jnp.mean(w * mse)


def step(state: TeacherState, batch, key):
  key = jax.random.fold_in(key, state.step)
  k_loss, k_lab = jax.random.split(key)
  spec, hp = state.spec, state.hparams

  def grads_of(mb, rows):
    labels = spec.drop_cond(k_lab, spec.cond_of(mb), hp.label_dropout, rows)
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(spec, p, mb['x'], labels, k_loss,
                                 hp.loss_weight,
                                 stratified_t=hp.stratified_t,
                                 rows=rows))(state.params)
    return grads, loss

  grads, loss = accumulate(grads_of, dict(batch), hp.grad_accum_steps)
  grad_norm = optax.tree.norm(grads)

  def apply(state, grads):
    updates, opt_state = state.tx.update(grads, state.opt_state,
                                         state.params)
    params = optax.apply_updates(state.params, updates)
    # Warm-started EMA, so early samples are not dominated by the init.
    decay = jnp.minimum(hp.ema_decay,
                        (1.0 + state.step) / (10.0 + state.step))
    ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    return state.replace(params=params, ema_params=ema,
                         opt_state=opt_state), {}

  new, _, ok = guard.apply_if_finite((loss, grad_norm), apply, state, grads)
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'finite': ok}
  return new.replace(step=state.step + 1), metrics


def adam_second_moment(opt_state):
  """Adam's raw second moment nu and its update count, from a teacher's
  optimiser state (`bias_corrected` turns them into v-hat)."""
  for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)):
    if isinstance(s, optax.ScaleByAdamState):
      return s.nu, s.count
  raise ValueError('optimiser state holds no Adam second moment')


def bias_corrected(nu, count, b2: float):
  """Adam's v-hat = nu / (1 - b2^count)."""
  correction = 1.0 - b2 ** jnp.maximum(count, 1).astype(jnp.float32)
  return jax.tree.map(lambda v: v / correction, nu)


def second_moment_update(spec: DenoiserSpec, hp: TeacherHParams, params, nu,
                         batch, key, b2: float):
  """nu <- b2 nu + (1 - b2) g^2 for one fresh teacher gradient g at fixed
  params: Adam's second moment for a teacher imported without it."""
  labels = spec.cond_of(batch)
  g = jax.grad(lambda p: diffusion_loss(spec, p, batch['x'], labels, key,
                                        hp.loss_weight))(params)
  return jax.tree.map(lambda n, gi: b2 * n + (1 - b2) * gi * gi, nu, g)
