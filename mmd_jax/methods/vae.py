"""AEVB: a VAE trained with the SGVB estimator B (docs/ALGORITHMS.md §5).

  L(x) = -KL(q(z|x) || N(0, I)) + 1/L sum_l log p(x | mu + sigma * eps_l)

with the KL in closed form. Evaluation adds the importance-weighted bound
with K samples (IWAE), log 1/K sum_k p(x, z_k) / q(z_k | x), which is >= the
ELBO in expectation and tends to log p(x) as K grows.

Bernoulli decoders read data in [0, 1] (grey levels as probabilities, the
usual MNIST practice); Gaussian decoders read the data as it is. `to_unit`
and `from_unit` convert our [-1, 1] images.

Public, loop-free use:

  state = vae.init(key, module, hparams, tx, batch)
  state, metrics = vae.step(state, batch, key)
"""
from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmd_jax.blocks import guard
from mmd_jax.blocks.microbatch import ALL, Rows, accumulate


@dataclasses.dataclass(frozen=True)
class VAEHParams:
  num_samples: int = 1         # L, samples of z per datapoint in training
  likelihood: str = 'bernoulli'
  grad_accum_steps: int = 1    # micro-batches per step (microbatch.py)


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array
  module: object = flax.struct.field(pytree_node=False)
  hparams: VAEHParams = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def to_unit(x):
  return (x + 1.0) * 0.5


def from_unit(x):
  return x * 2.0 - 1.0


def _flat_sum(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def gaussian_kl(mean, log_var):
  """KL(N(mean, exp(log_var)) || N(0, I)) per row, in closed form."""
  return -0.5 * jnp.sum(1.0 + log_var - mean ** 2 - jnp.exp(log_var), -1)


def log_likelihood(likelihood: str, x, loc, log_scale):
  """log p(x | z) per row: `loc` is the decoder's logits or mean."""
  if likelihood == 'bernoulli':
    t = to_unit(x)
    return _flat_sum(t * jax.nn.log_sigmoid(loc)
                     + (1.0 - t) * jax.nn.log_sigmoid(-loc))
  if likelihood == 'gaussian':
    return _flat_sum(-0.5 * jnp.square((x - loc) * jnp.exp(-log_scale))
                     - log_scale - 0.5 * math.log(2 * math.pi))
  raise ValueError(f'unknown likelihood {likelihood!r}')


def _log_normal(z, mean, log_var):
  return jnp.sum(-0.5 * (jnp.square(z - mean) * jnp.exp(-log_var) + log_var
                         + math.log(2 * math.pi)), -1)


def elbo_parts(module, params, x, key, num_samples: int = 1,
               likelihood: str = 'bernoulli', rows: Rows = ALL):
  """Estimator B's two terms per row: the reconstruction term averaged over
  `num_samples` reparameterised draws z = mean + std * eps, and the KL in
  closed form. The ELBO is their difference."""
  mean, log_var = module.apply(params, x, method='encode')
  std = jnp.exp(0.5 * log_var)

  def one(k):
    z = mean + std * rows.normal(k, mean.shape, mean.dtype)
    loc, log_scale = module.apply(params, z, method='decode')
    return log_likelihood(likelihood, x, loc, log_scale)

  rec = jnp.mean(jax.vmap(one)(jax.random.split(key, num_samples)), 0)
  return rec, gaussian_kl(mean, log_var)


def elbo(module, params, x, key, num_samples: int = 1,
         likelihood: str = 'bernoulli'):
  """Estimator B of the ELBO per row."""
  rec, kl = elbo_parts(module, params, x, key, num_samples, likelihood)
  return rec - kl


def iwae(module, params, x, key, num_samples: int,
         likelihood: str = 'bernoulli', chunk: int = 100):
  """log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), per row. The K
  samples are drawn `chunk` at a time and combined with a running
  logsumexp, so K = 1000s fits in memory."""
  mean, log_var = module.apply(params, x, method='encode')
  std = jnp.exp(0.5 * log_var)
  chunk = min(chunk, num_samples)
  if num_samples % chunk:
    raise ValueError(f'iwae: {num_samples} samples not a multiple of the '
                     f'chunk {chunk}')

  def log_w(k):
    eps = jax.random.normal(k, mean.shape, mean.dtype)
    z = mean + std * eps
    loc, log_scale = module.apply(params, z, method='decode')
    return (log_likelihood(likelihood, x, loc, log_scale)
            + _log_normal(z, 0.0, jnp.zeros_like(z))
            - _log_normal(z, mean, log_var))

  def body(acc, k):
    lw = jax.vmap(log_w)(jax.random.split(k, chunk))       # (chunk, B)
    return jnp.logaddexp(acc, jax.nn.logsumexp(lw, 0)), None

  keys = jax.random.split(key, num_samples // chunk)
  total, _ = jax.lax.scan(body, jnp.full(mean.shape[:1], -jnp.inf), keys)
  return total - math.log(num_samples)


def init(key, module, hparams: VAEHParams, tx, batch) -> VAEState:
  init_key, rng = jax.random.split(key)
  x = batch['x']
  z = jnp.zeros((x.shape[0], module.latent_dim), x.dtype)
  params = module.init(init_key, x, z)
  return VAEState(step=jnp.zeros((), jnp.int32), params=params,
                  opt_state=tx.init(params), rng=rng, module=module,
                  hparams=hparams, tx=tx)


def loss_fn(module, params, x, key, hp: VAEHParams, rows: Rows = ALL):
  """-ELBO per datapoint averaged over the batch (nats), and the parts."""
  rec, kl = elbo_parts(module, params, x, key, hp.num_samples, hp.likelihood,
                       rows)
  bound = jnp.mean(rec - kl)
  return -bound, {'elbo': bound, 'kl': jnp.mean(kl)}


def step(state: VAEState, batch, key):
  key = jax.random.fold_in(key, state.step)

  def grads_of(mb, rows):
    (loss, parts), grads = jax.value_and_grad(
        lambda p: loss_fn(state.module, p, mb['x'], key, state.hparams,
                          rows), has_aux=True)(state.params)
    return grads, dict(parts, loss=loss)

  grads, parts = accumulate(grads_of, {'x': batch['x']},
                            state.hparams.grad_accum_steps)
  loss = parts.pop('loss')
  grad_norm = optax.tree.norm(grads)

  def apply(state, grads):
    updates, opt_state = state.tx.update(grads, state.opt_state,
                                         state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), {}

  new, _, ok = guard.apply_if_finite((loss, grad_norm), apply, state, grads)
  metrics = dict(parts, loss=loss, grad_norm=grad_norm, finite=ok)
  return new.replace(step=state.step + 1), metrics


def decode_mean(module, params, z, likelihood: str):
  """The decoder's mean image in data space ([-1, 1] for Bernoulli)."""
  loc, _ = module.apply(params, z, method='decode')
  return from_unit(jax.nn.sigmoid(loc)) if likelihood == 'bernoulli' else loc


def encode_mean(module, params, x):
  return module.apply(params, x, method='encode')[0]
