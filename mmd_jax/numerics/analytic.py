"""Diffused Gaussian mixtures in closed form: an exact teacher for the toy
mixtures (docs/ALGORITHMS.md §4a).

Data x ~ sum_m w_m N(mu_m, s_m^2 I). Diffused, x_t = alpha x + sigma eps is
again a mixture, sum_m w_m N(alpha mu_m, v_m I) with v_m = alpha^2 s_m^2 +
sigma^2. With responsibilities r_m(x_t):
  score      grad log p_t(x_t) = -sum_m r_m (x_t - alpha mu_m) / v_m
  x-pred     E[x | x_t] = sum_m r_m (mu_m + (alpha s_m^2 / v_m)(x_t - alpha mu_m))
which satisfy Tweedie, E[x | x_t] = (x_t + sigma^2 score) / alpha.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.numerics import diffusion
from mmd_jax.numerics.condition import masked_mean


@dataclasses.dataclass(frozen=True)
class AnalyticMixture:
  """A mixture as tuples: hashable, so it can sit in a step's static
  hyperparameters."""
  means: tuple     # M tuples of D floats
  stds: tuple      # M floats
  weights: tuple   # M floats, summing to 1
  # Captions (data/toy2d_text.py): each caption's key (the masked mean of
  # its token embeddings) and the modes it allows; the last row is the
  # null caption, which allows every mode. A condition reads as the caption
  # with the nearest key, so p(x | caption) is the mixture restricted to
  # the caption's modes.
  caption_keys: tuple = ()   # K + 1 tuples of D floats
  allowed: tuple = ()        # K + 1 tuples of M bools

  @classmethod
  def of(cls, mixture, allowed=None, table=None) -> 'AnalyticMixture':
    """From data.toy2d.Mixture (numpy arrays); with `allowed` [K, M] (the
    modes each caption names) and the caption `table` (text_encoder's
    dict: emb, mask, null_emb, null_mask), conditional on captions."""
    keys, rows = (), ()
    if allowed is not None:
      emb = np.concatenate([table['emb'], table['null_emb'][None]])
      mask = np.concatenate([table['mask'], table['null_mask'][None]])
      keys = tuple(tuple(map(float, k)) for k in np.asarray(
          masked_mean(jnp.asarray(emb), jnp.asarray(mask))))
      rows = tuple(tuple(map(bool, a)) for a in np.concatenate(
          [allowed, np.ones((1, len(mixture.weights)), bool)]))
    return cls(tuple(tuple(map(float, m)) for m in np.asarray(mixture.means)),
               tuple(map(float, np.asarray(mixture.stds))),
               tuple(map(float, np.asarray(mixture.weights))), keys, rows)

  def arrays(self, dtype=jnp.float32):
    return (jnp.asarray(self.means, dtype), jnp.asarray(self.stds, dtype),
            jnp.asarray(self.weights, dtype))


def _log_weights(mix: AnalyticMixture, w, cond):
  """log w_m, (M,); given a caption, (B, M) with the modes it does not
  allow at -inf (a large negative number: no NaN in the softmax)."""
  if cond is None or not mix.caption_keys:
    return jnp.log(w)
  v = masked_mean(cond['emb'].astype(w.dtype), cond['mask'])
  keys = jnp.asarray(mix.caption_keys, w.dtype)
  row = jnp.argmin(jnp.sum(jnp.square(v[:, None] - keys[None]), -1), -1)
  return jnp.where(jnp.asarray(mix.allowed)[row], jnp.log(w), -1e30)


def _parts(mix: AnalyticMixture, x_t, lam, cond=None):
  """Per component: alpha (B,1,1), s^2 (M,), v (B,M), x_t - alpha mu
  (B,M,D) and log w_m N(x_t; alpha mu_m, v_m I) (B,M)."""
  mu, s, w = mix.arrays(x_t.dtype)
  a, sig = diffusion.alpha_sigma(jnp.broadcast_to(lam, x_t.shape[:1]))
  a, sig = a[:, None, None], sig[:, None, None]
  var = a[..., 0] ** 2 * s ** 2 + sig[..., 0] ** 2            # (B, M)
  diff = x_t[:, None, :] - a * mu[None]                       # (B, M, D)
  dim = x_t.shape[-1]
  logp = (_log_weights(mix, w, cond) - 0.5 * dim * jnp.log(2 * jnp.pi * var)
          - 0.5 * jnp.sum(diff ** 2, -1) / var)
  return a, s ** 2, var, diff, logp


def log_density(mix: AnalyticMixture, x_t, lam, cond=None):
  """log p_t(x_t) (given caption `cond`), (B,)."""
  *_, logp = _parts(mix, x_t, lam, cond)
  return jax.nn.logsumexp(logp, axis=-1)


def score(mix: AnalyticMixture, x_t, lam, cond=None):
  """grad_x log p_t(x_t) (given caption `cond`), (B, D)."""
  _, _, var, diff, logp = _parts(mix, x_t, lam, cond)
  r = jax.nn.softmax(logp, axis=-1)
  return -jnp.sum(r[..., None] * diff / var[..., None], axis=1)


def x_hat(mix: AnalyticMixture, x_t, lam, cond=None):
  """E[x | x_t] (given caption `cond`), (B, D): the exact denoiser."""
  a, s2, var, diff, logp = _parts(mix, x_t, lam, cond)
  mu = mix.arrays(x_t.dtype)[0]
  r = jax.nn.softmax(logp, axis=-1)
  post = mu[None] + (a * s2[None, :, None] / var[..., None]) * diff
  return jnp.sum(r[..., None] * post, axis=1)
