"""The closed-form teacher of the toy mixtures against the mixture itself:
the score is the derivative of the diffused log-density (central finite
differences in float64), the denoiser satisfies Tweedie and is the
posterior mean that sampling gives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.numerics import analytic, diffusion
from mmd_jax.data import toy2d


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('name', ['imbalanced8', 'two_scales'])
def test_score_is_the_derivative_of_the_diffused_log_density(name, x64):
  mix = analytic.AnalyticMixture.of(toy2d.get_mixture(name))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 2)) * 2.0)
  lam = jnp.asarray(rng.uniform(-6, 6, size=16))
  got = analytic.score(mix, x, lam)
  h = 1e-5
  for d in range(2):
    e = jnp.zeros(2).at[d].set(h)
    fd = (analytic.log_density(mix, x + e, lam)
          - analytic.log_density(mix, x - e, lam)) / (2 * h)
    np.testing.assert_allclose(got[:, d], fd, rtol=1e-6, atol=1e-8)
  # Tweedie: E[x | x_t] = (x_t + sigma^2 score) / alpha.
  a, s = diffusion.alpha_sigma(lam)
  np.testing.assert_allclose(
      analytic.x_hat(mix, x, lam),
      (x + (s ** 2)[:, None] * got) / a[:, None], rtol=1e-9, atol=1e-9)


def test_density_integrates_to_one_and_denoiser_is_the_posterior_mean(x64):
  m = toy2d.get_mixture('imbalanced8')
  mix = analytic.AnalyticMixture.of(m)
  lam = jnp.asarray(-1.0)
  # A grid integral of p_t over a box that holds its mass.
  g = jnp.linspace(-6, 6, 401)
  xx = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
  p = jnp.exp(analytic.log_density(mix, xx, lam))
  np.testing.assert_allclose(float(jnp.sum(p)) * float(g[1] - g[0]) ** 2,
                             1.0, rtol=1e-4)
  # E[x | x_t] by sampling: bin x_t near a point, average its x.
  rng = np.random.default_rng(1)
  x = m.sample(rng, 2_000_000).astype(np.float64)
  a, s = (float(v) for v in diffusion.alpha_sigma(lam))
  xt = a * x + s * rng.standard_normal(x.shape)
  at = np.array([0.5, 0.2])
  near = np.linalg.norm(xt - at, axis=1) < 0.03
  assert near.sum() > 500
  want = x[near].mean(0)
  got = np.asarray(analytic.x_hat(mix, jnp.asarray(at[None]), lam))[0]
  se = x[near].std(0) / np.sqrt(near.sum())
  assert np.all(np.abs(got - want) < 4 * se + 0.01), (got, want, se)


def test_estep_check_exact_target_and_a_long_chain_reach_each_other():
  """The E-step diagnostic's two halves agree where they must: its exact
  sampler of pi_t, and methods/emd.py's chain run long with small steps
  (near the unadjusted chain's continuous limit). And the exact M-step
  gradient is zero at the generator's maximum-likelihood fit."""
  from mmd_jax.science import estep_check
  from mmd_jax.evaluation import toy_metrics
  from mmd_jax.methods import emd
  m = toy2d.get_mixture('imbalanced8')
  mix = analytic.AnalyticMixture.of(m)
  rng = np.random.default_rng(0)
  gen = estep_check.Linear.off_fit(m, rng)
  lam, n = 0.0, 3000
  exact = np.concatenate(estep_check.exact_target(m, gen, lam, n, rng), 1)
  again = np.concatenate(estep_check.exact_target(m, gen, lam, n, rng), 1)
  floor = toy_metrics.energy_distance(exact, again)
  start = emd.EMDHParams(langevin_steps=0)
  long = emd.EMDHParams(langevin_steps=400, gamma_eps=0.05, gamma_z=0.05)
  dist = {}
  for name, hp in (('start', start), ('long', long)):
    x, z, _, _ = estep_check.chain(hp, gen, mix, lam, n,
                                   jax.random.PRNGKey(1))
    dist[name] = toy_metrics.energy_distance(np.concatenate([x, z], 1), exact)
  assert dist['start'] > 10 * floor, (dist, floor)
  assert dist['long'] < 3 * floor + 0.002, (dist, floor)
  # At the moment fit (the Gaussian family's ML point) the exact gradient
  # vanishes; off it, it does not.
  x = m.sample(rng, 400_000).astype(np.float64)
  fit = estep_check.Linear(np.linalg.cholesky(np.cov(x.T)), x.mean(0))
  for g, small in ((fit, True), (gen, False)):
    xt, z = estep_check.exact_target(m, g, lam, 400_000, rng)
    a, s = estep_check._alpha_sigma(lam)
    grads = estep_check.m_step_grads(g, lam, (xt - a * np.asarray(g(z))) / s,
                                     z)
    se = np.linalg.norm(grads.std(0)) / np.sqrt(len(z))
    assert (np.linalg.norm(grads.mean(0)) < 5 * se) == small
