"""mcmc.py against closed forms: a Gaussian posterior in both
parameterisations, and the ESS of an AR(1) process."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.numerics import mcmc
import tiny

MODEL = mcmc.GaussianChain(scales=(1.0, 0.5), obs_scale=0.7, x=1.3)


def _draw(sampler, parameterization, key):
  log_prob = (MODEL.log_prob_noncentred if parameterization == 'noncentred'
              else MODEL.log_prob_centred)
  num_chains = 256

  def chain(key):
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, (2,))
    if sampler == 'mala':
      return mcmc.langevin(log_prob, x0, k1, step_size=0.15, num_samples=300,
                           thin=2)
    return mcmc.hmc(log_prob, x0, k1, step_size=0.3, num_leapfrog=5,
                    num_samples=300)

  out = tiny.jit_run_fast(jax.vmap(chain))(jax.random.split(key, num_chains))
  s = out.samples[:, 50:]        # burn-in
  z = MODEL.to_z(s) if parameterization == 'noncentred' else s
  return np.asarray(z, np.float64).reshape(-1, 2), out


@pytest.mark.parametrize('sampler', ['mala', 'hmc'])
@pytest.mark.parametrize('parameterization', ['centred', 'noncentred'])
def test_samplers_reach_the_exact_gaussian_posterior(sampler, parameterization):
  z, out = _draw(sampler, parameterization, jax.random.PRNGKey(0))
  mean, cov = MODEL.posterior()
  assert 0.5 < float(np.mean(out.accept_rate)) < 1.0
  np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(np.cov(z.T), cov, atol=0.03)
  # The posterior is far from the prior, so this is not trivially met.
  assert abs(mean[1]) > 0.5 and np.abs(cov - np.diag([1.0, 1.25])).max() > 0.2


def test_eps_draws_read_as_z_are_wrong():
  """The transform matters: non-centred draws taken as z miss the moments
  (a check that the test above can fail)."""
  key = jax.random.PRNGKey(1)
  out = jax.vmap(lambda k: mcmc.hmc(MODEL.log_prob_noncentred,
                                    jnp.zeros(2), k, 0.3, 5, 200))(
      jax.random.split(key, 64))
  eps = np.asarray(out.samples[:, 50:]).reshape(-1, 2)
  mean, _ = MODEL.posterior()
  assert np.abs(eps.mean(0) - mean).max() > 0.1


def test_posterior_closed_form_matches_conditioning_by_hand():
  # z1 ~ N(0,1), z2 = z1 + 0.5 e: prior cov [[1,1],[1,1.25]]; x = z2 + 0.7 n.
  prior = np.array([[1.0, 1.0], [1.0, 1.25]])
  s = 1.25 + 0.49
  mean, cov = MODEL.posterior()
  np.testing.assert_allclose(mean, prior[:, 1] / s * 1.3)
  np.testing.assert_allclose(cov, prior - np.outer(prior[:, 1], prior[1]) / s)
  eps = jnp.array([0.3, -1.2])
  np.testing.assert_allclose(MODEL.to_eps(MODEL.to_z(eps)), eps, rtol=1e-6)
  # The two log densities differ by the constant log-Jacobian only.
  a = MODEL.log_prob_noncentred(eps) - MODEL.log_prob_centred(MODEL.to_z(eps))
  b = (MODEL.log_prob_noncentred(2 * eps)
       - MODEL.log_prob_centred(MODEL.to_z(2 * eps)))
  np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('rho', [0.0, 0.9])
def test_ess_of_an_ar1_process(rho):
  rng = np.random.default_rng(0)
  m, n = 8, 4000
  x = np.zeros((m, n))
  noise = rng.standard_normal((m, n))
  x[:, 0] = noise[:, 0]
  for t in range(1, n):
    x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho ** 2) * noise[:, t]
  expected = m * n * (1 - rho) / (1 + rho)
  ess = mcmc.effective_sample_size(x[..., None])
  assert ess.shape == (1,)
  assert ess[0] == pytest.approx(expected, rel=0.15)


def test_dncp_benchmark_shows_the_crossover():
  """The benchmark's own measurement, small: non-centred wins at
  s_z/s_x = 0.01, centred at 100 (docs/ALGORITHMS.md §5)."""
  from mmd_jax.science import dncp
  small = {c: dncp.measure(2, 0.01, c, num_chains=16, num_samples=100)
           for c in (True, False)}
  large = {c: dncp.measure(2, 100.0, c, num_chains=16, num_samples=100)
           for c in (True, False)}
  assert small[False]['ess_per_grad'] > 10 * small[True]['ess_per_grad']
  assert large[True]['ess_per_grad'] > 10 * large[False]['ess_per_grad']


def test_general_hierarchical_model_matches_the_gaussian_chain():
  """mcmc.Hierarchical on the chain z1 -> z2 -> x: its two log-densities
  equal GaussianChain's up to constants, and HMC on its non-centred form
  reaches the exact posterior."""
  h = mcmc.Hierarchical(
      conditionals=[lambda zs: (0.0, 1.0), lambda zs: (zs[0], 0.5)],
      log_likelihood=lambda zs: -0.5 * jnp.square((1.3 - zs[1]) / 0.7))
  pts = [jnp.array([0.3, -1.2]), jnp.array([1.1, 0.4]),
         jnp.array([-2.0, 0.9])]
  dc = [h.log_prob_centred([p[0], p[1]]) - MODEL.log_prob_centred(p)
        for p in pts]
  dn = [h.log_prob_noncentred([p[0], p[1]]) - MODEL.log_prob_noncentred(p)
        for p in pts]
  np.testing.assert_allclose(dc, dc[0], atol=1e-5)
  np.testing.assert_allclose(dn, dn[0], atol=1e-5)
  eps = [jnp.asarray(0.3), jnp.asarray(-1.2)]
  np.testing.assert_allclose(h.to_eps(h.to_z(eps)), eps, atol=1e-6)

  def chain(key):
    out = mcmc.hmc(h.log_prob_noncentred, [jnp.zeros(()), jnp.zeros(())],
                   key, 0.3, 5, 300)
    return jnp.stack(h.to_z(out.samples), -1)[50:]
  z = np.asarray(tiny.jit_run_fast(jax.vmap(chain))(
      jax.random.split(jax.random.PRNGKey(5), 256))).reshape(-1, 2)
  mean, cov = MODEL.posterior()
  np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(np.cov(z.T), cov, atol=0.03)
