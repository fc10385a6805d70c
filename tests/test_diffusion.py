"""Diffusion math against direct Gaussian computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.numerics import diffusion


def _joint_conditional(x, z_t, a_s, s_s, a_t, s_t):
  """q(z_s | z_t, x) by conditioning the joint Gaussian of (z_s, z_t) | x.

  z_s = a_s x + s_s e1, z_t = a_t x + s_t' ... built from the Markov chain
  z_t = (a_t/a_s) z_s + sigma_{t|s} e2, then Schur complement.
  """
  a_ts = a_t / a_s
  var_s = s_s**2
  var_t = s_t**2
  cov_st = a_ts * var_s  # Cov(z_s, z_t | x)
  mean = a_s * x + cov_st / var_t * (z_t - a_t * x)
  var = var_s - cov_st**2 / var_t
  return mean, var


@pytest.mark.parametrize('lam_t,lam_s', [(-3.0, 1.0), (0.0, 0.5), (2.0, 6.0),
                                         (-10.0, 10.0)])
def test_posterior_matches_gaussian_conditioning(lam_t, lam_s):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  z_t = rng.normal(size=(5, 3)).astype(np.float32)
  a_t, s_t = [float(v) for v in diffusion.alpha_sigma(jnp.float32(lam_t))]
  a_s, s_s = [float(v) for v in diffusion.alpha_sigma(jnp.float32(lam_s))]
  want_mean, want_var = _joint_conditional(x, z_t, a_s, s_s, a_t, s_t)
  lt = jnp.full((5,), lam_t)
  ls = jnp.full((5,), lam_s)
  mean, var = diffusion.posterior(z_t, x, lt, ls)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var[:, 0], np.full(5, want_var), rtol=1e-4,
                             atol=1e-7)
  # The paper's alpha/sigma form agrees with the log-SNR form.
  m2, v2 = diffusion.posterior_from_alphas(z_t, x, a_t, s_t, a_s, s_s)
  np.testing.assert_allclose(m2, mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(v2, var[0, 0], rtol=1e-3, atol=1e-7)


def test_posterior_monte_carlo():
  """Sampling z_s, then z_t | z_s, then re-conditioning recovers the law."""
  key = jax.random.PRNGKey(0)
  lam_t, lam_s = jnp.float32(-1.0), jnp.float32(2.0)
  a_t, s_t = diffusion.alpha_sigma(lam_t)
  a_s, s_s = diffusion.alpha_sigma(lam_s)
  n = 400_000
  x = jnp.full((n, 1), 0.7)
  k1, k2 = jax.random.split(key)
  z_s = a_s * x + s_s * jax.random.normal(k1, x.shape)
  a_ts = a_t / a_s
  z_t = a_ts * z_s + jnp.sqrt(s_t**2 - a_ts**2 * s_s**2) * jax.random.normal(
      k2, x.shape)
  mean, var = diffusion.posterior(z_t, x, jnp.full((n,), lam_t),
                                  jnp.full((n,), lam_s))
  resid = z_s - mean
  np.testing.assert_allclose(float(jnp.mean(resid)), 0.0, atol=3e-3)
  np.testing.assert_allclose(float(jnp.var(resid)), float(var[0, 0]),
                             rtol=1e-2)


def test_posterior_edge_cases():
  x = jnp.array([[0.3, -1.2]])
  z_t = jnp.array([[2.0, 0.5]])
  a_s, s_s = 0.8, 0.6
  # t = 1 (alpha_t = 0): N(alpha_s x, sigma_s^2), independent of z_t.
  mean, var = diffusion.posterior_from_alphas(z_t, x, 0.0, 1.0, a_s, s_s)
  np.testing.assert_allclose(mean, a_s * x, rtol=1e-6)
  np.testing.assert_allclose(var, s_s**2, rtol=1e-6)
  # s = 0 (alpha_s = 1, sigma_s = 0): returns x exactly.
  mean, var = diffusion.posterior_from_alphas(z_t, x, 0.6, 0.8, 1.0, 0.0)
  np.testing.assert_allclose(mean, x, rtol=1e-6)
  np.testing.assert_allclose(var, 0.0, atol=1e-12)
  # Same edge cases in log-SNR form: lam_t = -inf, lam_s = +inf.
  mean, var = diffusion.posterior(z_t, x, jnp.array([-jnp.inf]),
                                  jnp.array([jnp.log(a_s**2 / s_s**2)]))
  np.testing.assert_allclose(mean, a_s * x, rtol=1e-5)
  mean, var = diffusion.posterior(z_t, x, jnp.array([0.0]),
                                  jnp.array([jnp.inf]))
  np.testing.assert_allclose(mean, x, rtol=1e-6)
  np.testing.assert_allclose(var, 0.0, atol=1e-12)


def test_conversions_invert_each_other():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  lam = jnp.asarray(rng.uniform(-8, 8, size=6), jnp.float32)
  z = diffusion.diffuse(x, lam, eps)
  v = diffusion.v_from_x(z, x, lam)
  np.testing.assert_allclose(diffusion.x_from_v(z, v, lam), x, atol=1e-4)
  np.testing.assert_allclose(diffusion.eps_from_x(z, x, lam), eps, atol=2e-3)
  np.testing.assert_allclose(diffusion.x_from_eps(z, eps, lam), x, atol=2e-3)
  np.testing.assert_allclose(diffusion.eps_from_v(z, v, lam), eps, atol=1e-4)
  np.testing.assert_allclose(diffusion.v_from_eps(z, eps, lam), v, atol=2e-3)
  a, s = diffusion.alpha_sigma(lam[:, None])
  np.testing.assert_allclose(v, a * eps - s * x, atol=1e-4)  # the definition
  for p, out in (('v', v), ('eps', eps), ('x', x)):
    np.testing.assert_allclose(diffusion.x_from_output(p, z, out, lam), x,
                               atol=2e-3)


def test_schedules():
  t = jnp.linspace(0, 1, 101)
  for sched in (diffusion.Schedule('cosine'),
                diffusion.Schedule('shifted_cosine', resolution=128),
                diffusion.Schedule('edm')):
    lam = sched(t)
    assert bool(jnp.all(jnp.isfinite(lam)))
    assert bool(jnp.all(jnp.diff(lam) <= 1e-5)), sched.name  # decreasing
  cos = diffusion.Schedule('cosine')
  np.testing.assert_allclose(cos(0.5), 0.0, atol=1e-5)
  np.testing.assert_allclose(cos(0.0), 15.0, atol=1e-3)
  np.testing.assert_allclose(cos(1.0), -15.0, atol=1e-3)
  np.testing.assert_allclose(cos(0.25), -2 * np.log(np.tan(np.pi / 8)),
                             rtol=1e-5)
  shifted = diffusion.Schedule('shifted_cosine', resolution=128)
  np.testing.assert_allclose(shifted(0.3), cos(0.3) + 2 * np.log(64 / 128),
                             rtol=1e-5)
  edm = diffusion.Schedule('edm')
  np.testing.assert_allclose(edm(0.0), -2 * np.log(0.002), rtol=1e-5)
  np.testing.assert_allclose(edm(1.0), -2 * np.log(80.0), rtol=1e-5)


def test_loss_weights():
  lam = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_allclose(diffusion.loss_weight('v', lam), 1 + np.exp(lam),
                             rtol=1e-6)
  np.testing.assert_allclose(diffusion.loss_weight('edm', lam, 0.5),
                             np.exp(lam) + 4.0, rtol=1e-6)
  # The v-loss weight turns the x-space MSE into the v-space MSE.
  rng = np.random.default_rng(2)
  x, eps = rng.normal(size=(2, 3, 5))
  x_hat = x + 0.1 * rng.normal(size=(3, 5))
  z = diffusion.diffuse(jnp.asarray(x), lam, jnp.asarray(eps))
  v = diffusion.v_from_x(z, x, lam)
  v_hat = diffusion.v_from_x(z, x_hat, lam)
  lhs = diffusion.loss_weight('v', lam)[:, None] * (x - x_hat)**2
  np.testing.assert_allclose(lhs, (v - v_hat)**2, rtol=1e-3)
