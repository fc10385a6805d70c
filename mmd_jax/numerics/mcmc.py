"""Gradient-based MCMC: Langevin (unadjusted or Metropolis-adjusted) and HMC
over any log-density on a pytree, in the centred or the non-centred (DNCP)
parameterisation of a hierarchical Gaussian model, and an effective sample
size estimator. docs/ALGORITHMS.md §5.

Every sampler is a pure function of (log_prob, position, key, settings) and
vmaps over chains. Gradient evaluations are counted so that samplers with
different inner loops compare per unit of work.

EMD's E-step (methods/emd.py) takes its update from `langevin_update`: its
(eps, z) chain is the non-centred parameterisation of x_t = alpha g(z) +
sigma eps, its (x_t, z) chain the centred one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

tmap = jax.tree.map


def langevin_update(x, grad, step, noise):
  """One unadjusted Langevin step x + step * grad log p + sqrt(2 step) n,
  leafwise; `step` broadcasts against each leaf."""
  return tmap(lambda x, g, n: x + step * g + jnp.sqrt(2.0 * step) * n,
              x, grad, noise)


def _normal_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _vdot(a, b):
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


@struct.dataclass
class Chain:
  samples: object             # pytree, each leaf (num_samples, ...)
  accept_rate: jax.Array      # mean Metropolis acceptance (1 for ULA)
  # Gradient evaluations spent on the samples (static, so chains vmap).
  grad_evals: int = struct.field(pytree_node=False)


def langevin(log_prob: Callable, x0, key, step_size: float, num_samples: int,
             adjusted: bool = True, thin: int = 1) -> Chain:
  """Langevin chain; with `adjusted` (MALA) a Metropolis-Hastings correction
  makes it exact, without (ULA) it has O(step) bias, as EMD's E-step does.
  One gradient evaluation per step."""
  val_grad = jax.value_and_grad(log_prob)

  def log_q(x_to, x_from, g_from):
    # log N(x_to; x_from + step g_from, 2 step), up to a constant.
    d = tmap(lambda a, b, g: a - b - step_size * g, x_to, x_from, g_from)
    return -_vdot(d, d) / (4.0 * step_size)

  def one(carry, key):
    x, lp, g = carry
    k_noise, k_acc = jax.random.split(key)
    prop = langevin_update(x, g, step_size, _normal_like(k_noise, x))
    lp_p, g_p = val_grad(prop)
    if not adjusted:
      return (prop, lp_p, g_p), 1.0
    log_a = lp_p - lp + log_q(x, prop, g_p) - log_q(prop, x, g)
    acc = jnp.log(jax.random.uniform(k_acc)) < log_a
    pick = lambda a, b: jnp.where(acc, a, b)
    return (tmap(pick, prop, x), pick(lp_p, lp), tmap(pick, g_p, g)), \
        acc.astype(jnp.float32)

  return _run(one, val_grad, x0, key, num_samples, thin, grads_per_step=1)


def hmc(log_prob: Callable, x0, key, step_size: float, num_leapfrog: int,
        num_samples: int, thin: int = 1) -> Chain:
  """Hamiltonian Monte Carlo with an identity mass matrix and a Metropolis
  correction; `num_leapfrog` gradient evaluations per sample."""
  val_grad = jax.value_and_grad(log_prob)

  def one(carry, key):
    x, lp, g = carry
    k_mom, k_acc = jax.random.split(key)
    p0 = _normal_like(k_mom, x)

    def leap(c, _):
      x, p, g = c
      p = tmap(lambda p, g: p + 0.5 * step_size * g, p, g)
      x = tmap(lambda x, p: x + step_size * p, x, p)
      lp, g = val_grad(x)
      p = tmap(lambda p, g: p + 0.5 * step_size * g, p, g)
      return (x, p, g), lp

    (xn, pn, gn), lps = jax.lax.scan(leap, (x, p0, g), None,
                                     length=num_leapfrog)
    lpn = lps[-1]
    log_a = lpn - lp - 0.5 * _vdot(pn, pn) + 0.5 * _vdot(p0, p0)
    acc = jnp.log(jax.random.uniform(k_acc)) < log_a
    pick = lambda a, b: jnp.where(acc, a, b)
    return (tmap(pick, xn, x), pick(lpn, lp), tmap(pick, gn, g)), \
        acc.astype(jnp.float32)

  return _run(one, val_grad, x0, key, num_samples, thin,
              grads_per_step=num_leapfrog)


def _run(one, val_grad, x0, key, num_samples, thin, grads_per_step):
  lp0, g0 = val_grad(x0)

  def thinned(carry, key):
    carry, acc = jax.lax.scan(one, carry, jax.random.split(key, thin))
    return carry, (carry[0], jnp.mean(acc))

  _, (samples, acc) = jax.lax.scan(thinned, (x0, lp0, g0),
                                   jax.random.split(key, num_samples))
  return Chain(samples=samples, accept_rate=jnp.mean(acc),
               grad_evals=1 + num_samples * thin * grads_per_step)


# ----------------------------------------------------------------------------
# Hierarchical Gaussian chains in two parameterisations.


@dataclasses.dataclass(frozen=True)
class Hierarchical:
  """Any hierarchical model with Gaussian conditionals,
  z_i | z_1..z_{i-1} ~ N(loc_i, scale_i^2) with (loc_i, scale_i) =
  conditionals[i](z_1..z_{i-1}) (arrays or pytrees of them, scale_i > 0),
  and a log-likelihood log p(x | z_1..z_D).

  Centred, the sampler moves z; non-centred (DNCP), it moves eps with
  z_i = loc_i + scale_i * eps_i, so the model becomes a noise-driven
  network and the data enter only through the likelihood. The two
  log-densities differ by the log-Jacobian sum log scale_i, which is
  included, so both target the same posterior. E.g. a nonlinear DBN layer:
  `lambda zs: (jnp.tanh(w @ zs[-1]), sigma)`.
  """
  conditionals: Sequence[Callable]
  log_likelihood: Callable

  def to_z(self, eps):
    zs = []
    for cond, e in zip(self.conditionals, eps):
      loc, scale = cond(zs)
      zs.append(loc + scale * e)
    return zs

  def to_eps(self, zs):
    return [(z - loc) / scale for z, (loc, scale) in
            zip(zs, (c(zs[:i]) for i, c in enumerate(self.conditionals)))]

  def log_prob_centred(self, zs):
    lp = self.log_likelihood(zs)
    for i, cond in enumerate(self.conditionals):
      loc, scale = cond(zs[:i])
      lp = lp + jnp.sum(-0.5 * jnp.square((zs[i] - loc) / scale)
                        - jnp.log(scale) * jnp.ones_like(zs[i]))
    return lp

  def log_prob_noncentred(self, eps):
    return (sum(-0.5 * jnp.sum(jnp.square(e)) for e in eps)
            + self.log_likelihood(self.to_z(eps)))


@dataclasses.dataclass(frozen=True)
class GaussianChain:
  """z_1 ~ N(0, scales[0]^2), z_i | z_{i-1} ~ N(z_{i-1}, scales[i-1]^2), and
  an observation x | z_D ~ N(z_D, obs_scale^2): the linear dynamical system
  of the DNCP benchmark (D = 2 is docs/ALGORITHMS.md's z1 -> z2 -> x).

  Centred: the sampler moves z = (z_1..z_D). Non-centred: it moves eps with
  z_1 = scales[0] eps_1, z_i = z_{i-1} + scales[i-1] eps_i, so the prior is
  N(0, I) and the data enter only through the likelihood.
  """
  scales: Sequence[float]
  obs_scale: float
  x: float

  def to_z(self, eps):
    return jnp.cumsum(jnp.asarray(self.scales) * eps, axis=-1)

  def to_eps(self, z):
    prev = jnp.concatenate([jnp.zeros_like(z[..., :1]), z[..., :-1]], -1)
    return (z - prev) / jnp.asarray(self.scales)

  def _log_lik(self, z):
    return -0.5 * jnp.square((self.x - z[..., -1]) / self.obs_scale)

  def log_prob_centred(self, z):
    return (-0.5 * jnp.sum(jnp.square(self.to_eps(z)), -1)
            + self._log_lik(z))

  def log_prob_noncentred(self, eps):
    return -0.5 * jnp.sum(jnp.square(eps), -1) + self._log_lik(self.to_z(eps))

  def posterior(self):
    """The exact posterior over z: (mean, covariance), float64 numpy."""
    d = len(self.scales)
    lower = np.tril(np.ones((d, d))) * np.asarray(self.scales, np.float64)
    prior_cov = lower @ lower.T
    h = np.zeros(d)
    h[-1] = 1.0
    s = h @ prior_cov @ h + self.obs_scale ** 2
    gain = prior_cov @ h / s
    return gain * self.x, prior_cov - np.outer(gain, h @ prior_cov)


# ----------------------------------------------------------------------------
# Effective sample size.


def effective_sample_size(samples) -> np.ndarray:
  """ESS of each coordinate from (num_chains, num_samples, ...) draws:
  Geyer's initial monotone sequence on the chain-averaged autocorrelation,
  with the between-chain variance counted as in Stan's multi-chain ESS.
  Returns the total ESS over all chains, shape samples.shape[2:]."""
  x = np.asarray(samples, np.float64)
  m, n = x.shape[:2]
  x = x.reshape(m, n, -1)
  centred = x - x.mean(axis=1, keepdims=True)
  size = 2 ** int(np.ceil(np.log2(2 * n)))
  f = np.fft.rfft(centred, size, axis=1)
  acov = np.fft.irfft(f * np.conj(f), size, axis=1)[:, :n] / n
  within = acov[:, 0].mean(0) * n / max(n - 1, 1)
  var_plus = within * (n - 1) / n + (x.mean(1).var(0, ddof=1) if m > 1
                                     else 0.0)
  rho = 1.0 - (within - acov.mean(0)) / np.maximum(var_plus, 1e-300)
  rho[0] = 1.0
  ess = np.empty(rho.shape[1])
  for j in range(rho.shape[1]):
    r = rho[:, j]
    pairs = r[:-1:2][: (n - 1) // 2] + r[1::2][: (n - 1) // 2]
    # Initial positive, then monotone, sequence of pair sums.
    pos = np.argmax(pairs <= 0) if np.any(pairs <= 0) else len(pairs)
    pairs = np.minimum.accumulate(pairs[:pos]) if pos else pairs[:0]
    tau = -1.0 + 2.0 * np.sum(pairs)
    ess[j] = m * n / max(tau, 1.0 / np.log10(max(m * n, 10)))
  return ess.reshape(np.asarray(samples).shape[2:])
