"""EM distillation (Xie et al. 2024) to a one-step generator
(docs/ALGORITHMS.md §4).

  state = emd.init(key, teacher_params, spec, hp, gen_tx, score_tx, batch)
  state, metrics = emd.step(state, batch, key)
  x = emd.generator_sample(spec, state.generator_params, key, shape, hp.logsnr_generator)

Generator g_theta(z), student score net psi and teacher are parameter sets of
one module. The generator is the network read at the fixed log-SNR lambda*.

E-step: K Langevin steps on pi_t(x_t, z) ~ p_teacher,t(x_t) p_theta(z | x_t),
non-centred in (eps, z) with x_t = alpha g(z) + sigma eps (default) or centred
in (x_t, z). M-step: L(theta) = -w(t) (alpha/sigma) sg(eps_m)^T g(sg(z_K)),
then `score_updates` denoising-score-matching updates of psi on fresh
generator samples. K = 1, gamma_eps = 1, gamma_z = 0 with cancellation is
exactly Diff-Instruct / DMD (`DIFF_INSTRUCT`). The Langevin updates are
mcmc.langevin_update; the eps/x switch is mcmc's non-centred/centred choice.
The generator and the E-step live in emd_estep.py and are public here too.
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
from mmd_jax.methods import teacher as teacher_lib
from mmd_jax.blocks.microbatch import ALL, Rows, accumulate
from mmd_jax.methods.emd_estep import (  # noqa: F401 (public here too)
    EStepResult, e_step, generator, generator_sample, langevin, per_example,
    score_difference, teacher_denoiser)

sg = jax.lax.stop_gradient

PARAMETERIZATIONS = ('eps', 'x')      # non-centred (eps, z) | centred (x_t, z)
TEACHERS = ('network', 'analytic')    # analytic: the toy mixture's exact one
# euler: Langevin as the paper writes it. ou: the N(0, I) part of each
# target integrated exactly (docs/ALGORITHMS.md §4), the rest Euler.
INTEGRATORS = ('euler', 'ou')
CANCELLATIONS = ('eps', 'none')
# network: the student score net psi. quadrature: the 2-D generator's exact
# diffused denoiser (quadrature.py), toys only; psi is still trained.
FAKE_SCORES = ('network', 'quadrature')
WEIGHTINGS = ('inv_snr', 'sigma_over_alpha', 'one')


@dataclasses.dataclass(frozen=True)
class EMDHParams:
  langevin_steps: int = 4          # K, static
  parameterization: str = 'eps'
  gamma_eps: float = 0.5           # eps step; centred x uses gamma_eps sigma^2
  gamma_z: float = 0.0
  noise_cancellation: str = 'eps'
  logsnr_generator: float = 0.0    # lambda*
  weighting: str = 'inv_snr'       # w(t)
  t_min: float = 0.02
  t_max: float = 0.98
  score_updates: int = 1
  score_loss_weight: str = 'v'
  guidance: float = 0.0            # CFG inside the teacher only
  grad_accum_steps: int = 1        # micro-batches per step (microbatch.py)
  # 'analytic': the E-step and M-step read the data mixture's exact
  # denoiser (analytic.py) instead of the teacher network; the generator
  # and score net still start from the network.
  teacher: str = 'network'
  mixture: object = None           # analytic.AnalyticMixture
  integrator: str = 'euler'
  fake_score: str = 'network'
  # CFG on the fake score as well (SiD-LSG): the score net's guided
  # x-prediction against the null condition; 0: unguided (DMD2, FastGen).
  fake_guidance: float = 0.0


# EMD-1 with a unit eps step: the mode-seeking baseline.
DIFF_INSTRUCT = dict(langevin_steps=1, gamma_eps=1.0, gamma_z=0.0,
                     noise_cancellation='eps', parameterization='eps')


@flax.struct.dataclass
class EMDState:
  step: jax.Array
  teacher_params: dict     # frozen
  generator_params: dict   # theta
  score_params: dict       # psi
  generator_opt: optax.OptState
  score_opt: optax.OptState
  rng: jax.Array
  spec: DenoiserSpec = flax.struct.field(pytree_node=False)
  hparams: EMDHParams = flax.struct.field(pytree_node=False)
  generator_tx: optax.GradientTransformation = flax.struct.field(
      pytree_node=False)
  score_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @property
  def sampling_params(self):
    return self.generator_params


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def init(key, teacher_params, spec: DenoiserSpec, hp: EMDHParams,
         generator_tx: optax.GradientTransformation,
         score_tx: optax.GradientTransformation, batch=None) -> EMDState:
  del batch
  # Copies: steps donate their state, which must never delete the caller's
  # teacher arrays.
  gen, score = _copy(teacher_params), _copy(teacher_params)
  return EMDState(
      step=jnp.zeros((), jnp.int32), teacher_params=_copy(teacher_params),
      generator_params=gen, score_params=score,
      generator_opt=generator_tx.init(gen), score_opt=score_tx.init(score),
      rng=key, spec=spec, hparams=hp, generator_tx=generator_tx,
      score_tx=score_tx)


# ----------------------------------------------------------------------------
# M-step.


def weight(name: str, lam):
  """w(t). 'inv_snr' makes the K = 1 gradient (x_T - x_S)^T dg/dtheta, O(1)
  at every t; 'sigma_over_alpha' is docs/ALGORITHMS.md §4's example."""
  a, s = diffusion.alpha_sigma(lam)
  if name == 'inv_snr':
    return (s * s) / (a * a)
  if name == 'sigma_over_alpha':
    return s / a
  if name == 'one':
    return jnp.ones_like(lam)
  raise ValueError(f'unknown EMD weighting {name!r}; known: {WEIGHTINGS}')


def sample_times(key, batch: int, hp: EMDHParams, rows: Rows = ALL):
  return hp.t_min + (hp.t_max - hp.t_min) * rows.uniform(key, (batch,))


def _mean_dims(v):
  return jnp.mean(v.reshape(v.shape[0], -1), axis=-1)


def generator_gradient(spec, hp: EMDHParams, teacher_params, score_params,
                       generator_params, z, eps, lam, labels, key,
                       rows: Rows = ALL):
  """grad_theta L, L = -mean_b w_b (alpha_b / sigma_b) mean_d eps_m g(z_K),
  for given initial (z, eps), log-SNRs and Langevin key."""
  def gen_theta(z_in):
    return lambda theta: generator(spec, theta, z_in, labels,
                                   hp.logsnr_generator)

  g0, vjp = jax.vjp(gen_theta(z), generator_params)
  r = e_step(spec, hp, teacher_params, score_params, generator_params, z, eps,
             lam, labels, key, g0=sg(g0), rows=rows)
  eps_m = r.eps - r.cancel if hp.noise_cancellation == 'eps' else r.eps
  a, s = diffusion.alpha_sigma(lam)
  coef = weight(hp.weighting, lam) * a / s
  if hp.gamma_z > 0 and hp.langevin_steps > 0:  # z moved: differentiate at z_K
    g, vjp = jax.vjp(gen_theta(r.z), generator_params)
  else:  # z_K = z: reuse the first forward pass
    g = g0
  n, dim = z.shape[0], z[0].size
  (grad,) = vjp(-per_example(coef, eps_m) * eps_m / (n * dim))
  loss = -jnp.mean(coef * _mean_dims(eps_m * sg(g)))
  stats = {'eps_m_rms': jnp.sqrt(jnp.mean(jnp.square(eps_m))),
           'z_shift_rms': jnp.sqrt(jnp.mean(jnp.square(r.z - z)))}
  return loss, grad, stats


def diff_instruct_gradient(spec, teacher_params, score_params,
                           generator_params, z, eps, lam, labels,
                           logsnr_generator: float, weighting: str = 'inv_snr',
                           guidance: float = 0.0, teacher_x=None,
                           student_x=None):
  """The Diff-Instruct / DMD descent direction coded directly:
  -mean_b w_b alpha_b mean_d (s_T - s_S)^T dg/dtheta at x_t = alpha g + sigma eps,
  with the scores written out as (alpha x_hat - x_t) / sigma^2."""
  def gen(theta):
    return generator(spec, theta, z, labels, logsnr_generator)

  g, vjp = jax.vjp(gen, generator_params)
  a, s = diffusion.alpha_sigma(per_example(lam, z))
  x_t = a * g + s * eps
  den = teacher_x or spec.denoiser(teacher_params, labels, guidance)
  s_teacher = (a * den(x_t, lam) - x_t) / (s * s)
  x_student = (student_x(x_t, lam) if student_x is not None
               else spec.x_hat(score_params, x_t, lam, labels))
  s_student = (a * x_student - x_t) / (s * s)
  w = per_example(weight(weighting, lam), z)
  n, dim = z.shape[0], z[0].size
  (grad,) = vjp(-w * a * (s_teacher - s_student) / (n * dim))
  return grad


def score_update(spec, hp: EMDHParams, score_params, score_opt, score_tx,
                 generator_params, labels, key, shape, global_step=0,
                 check=()):
  """`score_updates` DSM steps of psi on fresh generator samples, each at
  the learning rate of `global_step` (a global-step optimiser) rather than
  its own update count. Each update needs the reduced gradient of the one
  before, so they are unrolled: one reduction per update, none in a loop."""
  n = hp.grad_accum_steps
  lab_batch = {} if labels is None else {'label': labels}
  psi, opt, losses, oks = score_params, score_opt, [], []
  for k in jax.random.split(key, hp.score_updates):
    k_z, k_loss = jax.random.split(k)

    def grads_of(mb, rows, psi=psi, k_z=k_z, k_loss=k_loss):
      lab = mb.get('label')
      micro_shape = (rows.here(shape[0]),) + tuple(shape[1:])
      x0 = sg(generator(spec, generator_params,
                        rows.normal(k_z, micro_shape, jnp.float32), lab,
                        hp.logsnr_generator))
      loss, grad = jax.value_and_grad(
          lambda p: teacher_lib.diffusion_loss(
              spec, p, x0, lab, k_loss, hp.score_loss_weight, train=False,
              rows=rows))(psi)
      return grad, loss

    grad, loss = accumulate(grads_of, lab_batch, n)

    def apply(carry, grad):
      psi, opt, _ = optim.update(score_tx, grad, carry[1], carry[0],
                                 global_step)
      return (psi, opt), {}

    (psi, opt), _, ok = guard.apply_if_finite(
        (*check, loss, optax.tree.norm(grad)), apply, (psi, opt), grad)
    oks.append(ok)
    losses.append(loss)
  return psi, opt, jnp.mean(jnp.stack(losses)), jnp.all(jnp.stack(oks))


def step(state: EMDState, batch, key):
  """One generator update (E-step then M-step), then the score updates."""
  key = jax.random.fold_in(key, state.step)
  k_t, k_z, k_eps, k_mcmc, k_score = jax.random.split(key, 5)
  spec, hp = state.spec, state.hparams

  def grads_of(mb, rows):
    labels = spec.cond_of(mb)
    shape = mb['x'].shape
    lam = spec.schedule(sample_times(k_t, shape[0], hp, rows))
    z = rows.normal(k_z, shape, jnp.float32)
    eps = rows.normal(k_eps, shape, jnp.float32)
    loss, grad, stats = generator_gradient(
        spec, hp, state.teacher_params, state.score_params,
        state.generator_params, z, eps, lam, labels, k_mcmc, rows)
    return grad, {'loss': loss, **stats}

  grad, metrics = accumulate(grads_of, dict(batch), hp.grad_accum_steps)
  grad_norm = optax.tree.norm(grad)

  def apply(state, grad):
    theta, gen_opt, rate = optim.update(state.generator_tx, grad,
                                        state.generator_opt,
                                        state.generator_params, state.step)
    return state.replace(generator_params=theta, generator_opt=gen_opt), rate

  state, rate, ok = guard.apply_if_finite((metrics['loss'], grad_norm),
                                          apply, state, grad)
  labels = spec.cond_of(batch)
  # Each score update is guarded by its own values and the generator's: a
  # step with a non-finite generator gradient changes neither network.
  psi, score_opt, score_loss, score_ok = score_update(
      spec, hp, state.score_params, state.score_opt, state.score_tx,
      state.generator_params, labels, k_score, batch['x'].shape, state.step,
      check=(metrics['loss'], grad_norm))
  new = state.replace(step=state.step + 1, score_params=psi,
                      score_opt=score_opt)
  return new, {**metrics, 'grad_norm': grad_norm, 'score_loss': score_loss,
               'learning_rate': rate, 'finite': ok & score_ok}
