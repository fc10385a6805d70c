"""Samplers on Gaussian data with the analytic posterior-mean denoiser."""
import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.numerics import diffusion, sampling
import tiny

MEAN = np.array([1.0, -0.5], np.float32)
COV = np.array([[0.5, 0.3], [0.3, 0.4]], np.float32)


def analytic_denoiser(z, lam):
  """E[x | z_t] for x ~ N(m, C): m + a C (a^2 C + s^2 I)^-1 (z - a m)."""
  a, s = diffusion.alpha_sigma(lam)

  def one(zi, ai, si):
    prec = jnp.linalg.inv(ai**2 * COV + si**2 * jnp.eye(2))
    return MEAN + ai * COV @ prec @ (zi - ai * MEAN)

  return jax.vmap(one)(z, a, s)


def _moments(x):
  return np.mean(x, 0), np.cov(np.asarray(x), rowvar=False)


def test_ancestral_512_steps_matches_data_moments():
  sched = diffusion.Schedule('cosine')
  x = tiny.jit_run_fast(lambda k: sampling.ancestral_sample(
      k, analytic_denoiser, sched, (40_000, 2), 512))(jax.random.PRNGKey(0))
  m, c = _moments(x)
  np.testing.assert_allclose(m, MEAN, atol=0.02)
  np.testing.assert_allclose(c, COV, atol=0.02)


def test_ddim_matches_data_moments():
  sched = diffusion.Schedule('cosine')
  x = tiny.jit_run_fast(lambda k: sampling.ddim_sample(
      k, analytic_denoiser, sched, (40_000, 2), 256))(jax.random.PRNGKey(1))
  m, c = _moments(x)
  np.testing.assert_allclose(m, MEAN, atol=0.02)
  np.testing.assert_allclose(c, COV, atol=0.03)


def test_one_step_gives_the_conditional_mean():
  """k = 1 returns E[x | z_1], which at lam_min is almost the data mean."""
  sched = diffusion.Schedule('cosine')
  x = sampling.ancestral_sample(jax.random.PRNGKey(2), analytic_denoiser,
                                sched, (1000, 2), 1)
  np.testing.assert_allclose(np.mean(x, 0), MEAN, atol=0.01)
  assert float(np.max(np.std(x, 0))) < 0.01


def test_few_steps_shrink_variance():
  """A known failure mode of few-step ancestral sampling: too little spread."""
  sched = diffusion.Schedule('cosine')
  x2 = sampling.ancestral_sample(jax.random.PRNGKey(3), analytic_denoiser,
                                 sched, (20_000, 2), 2)
  assert np.trace(np.cov(np.asarray(x2), rowvar=False)) < 0.95 * np.trace(COV)


def test_cfg_combine():
  xc = jnp.array([1.0, 2.0])
  xu = jnp.array([0.5, -1.0])
  np.testing.assert_allclose(sampling.cfg_combine(xc, xu, 0.0), xc)
  np.testing.assert_allclose(sampling.cfg_combine(xc, xu, 2.0),
                             3 * xc - 2 * xu)
