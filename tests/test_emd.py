"""EM distillation: the Diff-Instruct identity at K = 1, the zero-mean
estimator at K = 0, the noise bookkeeping, and the E-step chains against an
analytic Gaussian target."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.numerics import diffusion
from mmd_jax.methods import emd

SCHED = diffusion.Schedule('cosine')
DI = emd.EMDHParams(**emd.DIFF_INSTRUCT, logsnr_generator=0.0)


# A tiny spec and non-degenerate random nets, shared with the MM tests.
from test_moment_matching import _random_params, _spec  # noqa: E402
import tiny


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _three_nets(dtype):
  spec = _spec()
  x = jnp.zeros((4, 2))
  nets = [jax.tree.map(lambda a: a.astype(dtype),
                       _random_params(spec, jax.random.PRNGKey(i), x))
          for i in range(3)]
  return spec, nets


@pytest.mark.parametrize('weighting', emd.WEIGHTINGS)
def test_k1_unit_step_is_diff_instruct(weighting):
  """K=1, gamma_eps=1, gamma_z=0 with cancellation: eps_m = sigma d, so the
  EMD generator gradient is the directly coded Diff-Instruct gradient."""
  with jax.enable_x64(True):
    spec, (teacher_p, score_p, gen_p) = _three_nets(jnp.float64)
    n = 32
    kz, ke, kt, kl = jax.random.split(jax.random.PRNGKey(7), 4)
    z = jax.random.normal(kz, (n, 2), jnp.float64)
    eps = jax.random.normal(ke, (n, 2), jnp.float64)
    t = jax.random.uniform(kt, (n,), jnp.float64, 0.05, 0.95)
    lam = SCHED(t).astype(jnp.float64)
    hp = dataclasses.replace(DI, weighting=weighting)
    # Jitted: eager dispatch compiles each of the many small ops.
    grad = jax.jit(lambda hp, *a: emd.generator_gradient(spec, hp, *a)[1],
                   static_argnums=0)
    g_emd = grad(hp, teacher_p, score_p, gen_p, z, eps, lam, None, kl)
    g_di = jax.jit(lambda *a: emd.diff_instruct_gradient(
        spec, *a, None, 0.0, weighting))(teacher_p, score_p, gen_p, z, eps,
                                         lam)
    a, b = _flat(g_emd), _flat(g_di)
    assert float(jnp.linalg.norm(b)) > 1e-3  # a real, non-zero gradient
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(
        jnp.max(jnp.abs(b))))
    # Without cancellation the Langevin noise stays in eps_m: not equal.
    g_raw = grad(dataclasses.replace(hp, noise_cancellation='none'),
                 teacher_p, score_p, gen_p, z, eps, lam, None, kl)
    assert float(jnp.linalg.norm(_flat(g_raw) - b)) > 0.1 * float(
        jnp.linalg.norm(b))


def _x64_draws(seed: int, n: int = 32):
  """(z, eps, lam, Langevin key) in float64, t ~ U[0.05, 0.95]."""
  kz, ke, kt, kl = jax.random.split(jax.random.PRNGKey(seed), 4)
  z = jax.random.normal(kz, (n, 2), jnp.float64)
  eps = jax.random.normal(ke, (n, 2), jnp.float64)
  lam = SCHED(jax.random.uniform(kt, (n,), jnp.float64, 0.05,
                                 0.95)).astype(jnp.float64)
  return z, eps, lam, kl


def test_the_analytic_teacher_replaces_the_network_in_both_steps():
  """emd.teacher='analytic': the E-step's d and the M-step read the data
  mixture's exact denoiser, so K=1 EMD is Diff-Instruct against the exact
  teacher, and neither depends on the teacher network's parameters."""
  from mmd_jax.numerics import analytic
  from mmd_jax.data import toy2d
  mix = analytic.AnalyticMixture.of(toy2d.get_mixture('imbalanced8'))
  with jax.enable_x64(True):
    spec, (teacher_p, score_p, gen_p) = _three_nets(jnp.float64)
    z, eps, lam, kl = _x64_draws(8)
    hp = dataclasses.replace(DI, teacher='analytic', mixture=mix)
    exact = lambda x_t, l: analytic.x_hat(mix, x_t, l)
    _, g_emd, _ = emd.generator_gradient(spec, hp, teacher_p, score_p, gen_p,
                                         z, eps, lam, None, kl)
    g_di = emd.diff_instruct_gradient(spec, teacher_p, score_p, gen_p, z, eps,
                                      lam, None, 0.0, teacher_x=exact)
    np.testing.assert_allclose(_flat(g_emd), _flat(g_di), rtol=1e-9,
                               atol=1e-12 * float(jnp.max(jnp.abs(_flat(g_di)))))
    # The teacher network is not read: other parameters, same gradient.
    other = jax.tree.map(lambda p: p + 1.0, teacher_p)
    _, g_other, _ = emd.generator_gradient(spec, hp, other, score_p, gen_p, z,
                                           eps, lam, None, kl)
    np.testing.assert_array_equal(_flat(g_other), _flat(g_emd))
    # And it differs from the network teacher's.
    _, g_net, _ = emd.generator_gradient(spec, DI, teacher_p, score_p, gen_p,
                                         z, eps, lam, None, kl)
    assert float(jnp.linalg.norm(_flat(g_net) - _flat(g_emd))) > 1e-3


def test_the_quadrature_fake_score_replaces_the_score_net():
  """emd.fake_score='quadrature': d reads the generator's exact diffused
  denoiser (quadrature.py) instead of the score net, so K=1 EMD is
  Diff-Instruct with that fake score and the score net is not read."""
  from mmd_jax.numerics import quadrature
  with jax.enable_x64(True):
    spec, (teacher_p, score_p, gen_p) = _three_nets(jnp.float64)
    z, eps, lam, kl = _x64_draws(9)
    hp = dataclasses.replace(DI, fake_score='quadrature')
    grid, logw = quadrature.z_grid(quadrature.TRAIN_GRID,
                                   quadrature.TRAIN_EXTENT)
    g_grid = emd.generator(spec, gen_p, jnp.asarray(grid), None, 0.0)
    fake = lambda x_t, l: quadrature.denoise(g_grid, logw, x_t, l)
    _, g_emd, _ = emd.generator_gradient(spec, hp, teacher_p, score_p, gen_p,
                                         z, eps, lam, None, kl)
    g_di = emd.diff_instruct_gradient(spec, teacher_p, score_p, gen_p, z, eps,
                                      lam, None, 0.0, student_x=fake)
    np.testing.assert_allclose(_flat(g_emd), _flat(g_di), rtol=1e-6,
                               atol=1e-9 * float(jnp.max(jnp.abs(_flat(g_di)))))
    other = jax.tree.map(lambda p: p + 1.0, score_p)
    _, g_other, _ = emd.generator_gradient(spec, hp, teacher_p, other, gen_p,
                                           z, eps, lam, None, kl)
    np.testing.assert_array_equal(_flat(g_other), _flat(g_emd))
    _, g_net, _ = emd.generator_gradient(spec, DI, teacher_p, score_p, gen_p,
                                         z, eps, lam, None, kl)
    assert float(jnp.linalg.norm(_flat(g_net) - _flat(g_emd))) > 1e-3


def _gradient_draws(hp, num_draws, n=16):
  spec, (teacher_p, score_p, gen_p) = _three_nets(jnp.float32)

  @jax.jit
  def draw(key):
    kz, ke, kt, kl = jax.random.split(key, 4)
    lam = SCHED(emd.sample_times(kt, n, hp))
    _, g, _ = emd.generator_gradient(
        spec, hp, teacher_p, score_p, gen_p, jax.random.normal(kz, (n, 2)),
        jax.random.normal(ke, (n, 2)), lam, None, kl)
    return _flat(g)

  keys = jax.random.split(jax.random.PRNGKey(3), num_draws)
  return np.asarray(tiny.jit_run_fast(lambda k: jax.lax.map(draw, k))(keys),
                    np.float64)


def _z_scores(draws):
  mean = draws.mean(0)
  se = draws.std(0, ddof=1) / np.sqrt(len(draws))
  keep = se > 0
  return np.abs(mean[keep]) / se[keep]


def test_k0_estimator_has_zero_mean():
  """With no Langevin steps eps is independent of z: E[grad] = 0. The same
  check at K=1 must see a mean, so this test can fail."""
  hp0 = dataclasses.replace(DI, langevin_steps=0, weighting='sigma_over_alpha')
  z0 = _z_scores(_gradient_draws(hp0, 3000))
  # ~400 parameters: |z| stays below 5 for all of them under the null.
  assert z0.max() < 5.0, z0.max()
  assert abs(z0.mean() - np.sqrt(2 / np.pi)) < 0.15  # |N(0,1)| has mean 0.80
  z1 = _z_scores(_gradient_draws(
      dataclasses.replace(DI, weighting='sigma_over_alpha'), 300))
  assert z1.max() > 20.0, z1.max()


@pytest.mark.parametrize('parameterization', emd.PARAMETERIZATIONS)
def test_noise_bookkeeping_decays_with_the_drift(parameterization):
  """With d = 0 and gamma_z = 0, eps_K = (1-g)^K eps_0 + (injected noise),
  and c must be exactly that injected noise: eps_K - c = (1-g)^K eps_0.
  A plain running sum of the noise fails this for K > 1."""
  hp = emd.EMDHParams(langevin_steps=5, gamma_eps=0.3, gamma_z=0.0,
                      parameterization=parameterization)
  shape = (64, 3)
  z = jax.random.normal(jax.random.PRNGKey(0), shape)
  eps = jax.random.normal(jax.random.PRNGKey(1), shape)
  lam = jnp.full((shape[0],), 0.7)
  r = emd.langevin(hp, lambda zz: jnp.tanh(zz) + 0.5, jnp.zeros_like, z, eps,
                   lam, jax.random.PRNGKey(2))
  np.testing.assert_allclose(r.eps - r.cancel, 0.7 ** 5 * eps, atol=2e-5)
  # The exponential integrator: decay e^-gamma per step.
  r = emd.langevin(dataclasses.replace(hp, integrator='ou'),
                   lambda zz: jnp.tanh(zz) + 0.5, jnp.zeros_like, z, eps,
                   lam, jax.random.PRNGKey(2))
  np.testing.assert_allclose(r.eps - r.cancel, np.exp(-0.3 * 5) * eps,
                             atol=2e-5)


def test_centred_and_noncentred_agree_at_fixed_z():
  """gamma_z = 0: a gamma sigma^2 step in x_t is the eps chain's step."""
  spec, (teacher_p, score_p, gen_p) = _three_nets(jnp.float32)
  hp = emd.EMDHParams(langevin_steps=6, gamma_eps=0.4, gamma_z=0.0)
  n = 32
  z = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
  eps = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
  lam = SCHED(jnp.linspace(0.1, 0.9, n))
  out = [emd.e_step(spec, dataclasses.replace(hp, parameterization=p),
                    teacher_p, score_p, gen_p, z, eps, lam, None,
                    jax.random.PRNGKey(5)) for p in ('eps', 'x')]
  np.testing.assert_allclose(out[0].eps, out[1].eps, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out[0].cancel, out[1].cancel, rtol=1e-6)


def _gaussian_problem():
  """Linear generator g(z) = A z + b, data N(mu, S), everything analytic."""
  A = jnp.array([[0.8, 0.3], [0.0, 0.6]])
  b = jnp.array([0.2, -0.1])
  mu = jnp.array([1.0, -0.5])
  S = jnp.array([[0.5, 0.2], [0.2, 0.3]])
  lam0 = 0.5
  a2 = float(jax.nn.sigmoid(lam0))
  a, s = np.sqrt(a2), np.sqrt(1 - a2)
  eye = jnp.eye(2)
  c_teacher = a2 * S + s * s * eye     # p_teacher,t = N(a mu, C_T)
  c_gen = a2 * A @ A.T + s * s * eye   # p_theta,t = N(a b, C_G)

  def diff(x):
    s_t = -jnp.linalg.solve(c_teacher, (x - a * mu).T).T
    s_g = -jnp.linalg.solve(c_gen, (x - a * b).T).T
    return s_t - s_g

  # pi(x, z) = p_T(x) p_theta(z | x): x ~ N(a mu, C_T), z | x Gaussian.
  prec = eye + a2 * A.T @ A / (s * s)
  m = jnp.linalg.solve(prec, a * A.T / (s * s))
  mean = jnp.concatenate([a * mu, m @ (a * mu - a * b)])
  cov_xz = c_teacher @ m.T
  cov = jnp.block([[c_teacher, cov_xz],
                   [cov_xz.T, m @ c_teacher @ m.T + jnp.linalg.inv(prec)]])
  return (lambda z: z @ A.T + b), diff, lam0, a, s, mean, cov


@pytest.mark.parametrize('parameterization,integrator,steps,gamma', [
    ('eps', 'euler', 600, 0.02), ('x', 'euler', 600, 0.02),
    # The exponential integrator takes 10x the steps for the same error in
    # the non-centred chain; the centred chain's z is held by the
    # likelihood, an Euler-treated pull, so it keeps the small step.
    ('eps', 'ou', 60, 0.2), ('x', 'ou', 600, 0.02)])
def test_e_step_reaches_the_gaussian_target(parameterization, integrator,
                                            steps, gamma):
  gen, diff, lam0, a, s, mean, cov = _gaussian_problem()
  hp = emd.EMDHParams(langevin_steps=steps, gamma_eps=gamma,
                      gamma_z=gamma if integrator == 'ou' else 0.02,
                      parameterization=parameterization,
                      integrator=integrator)
  n = 20_000
  z = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
  eps = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
  r = tiny.jit_run_fast(lambda z, e, k: emd.langevin(
      hp, gen, diff, z, e, jnp.full((n,), lam0), k))(
          z, eps, jax.random.PRNGKey(2))
  x_t = a * gen(r.z) + s * r.eps
  joint = np.asarray(jnp.concatenate([x_t, r.z], axis=1), np.float64)
  # The start (the generator's own joint) is far from the target...
  start = np.concatenate([np.asarray(a * gen(z) + s * eps), np.asarray(z)], 1)
  assert np.abs(start.mean(0) - mean).max() > 0.3
  # ...the chain ends on it, within Monte Carlo and step-size error.
  np.testing.assert_allclose(joint.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(np.cov(joint.T), cov, atol=0.04)


def test_score_updates_follow_the_global_schedule():
  """With several score updates per step, the score network's rate is the
  generator's, read at the global step (its own count would run the
  schedule score_updates times faster and stop it halfway)."""
  import optax
  from mmd_jax.blocks import optim
  spec, (teacher_p, _, _) = _three_nets(jnp.float32)
  peak, warmup, total = 1e-3, 2, 8
  tx, sched = optim.global_step_adam(peak, warmup, total, 1.0, 0.0, 0.99, 1e-8)
  hp = emd.EMDHParams(langevin_steps=1, score_updates=3)
  st = emd.init(jax.random.PRNGKey(0), teacher_p, spec, hp, tx, tx)
  step = jax.jit(emd.step)
  x = jnp.zeros((4, 2))
  for n in range(total):
    st, m = step(st, {'x': x}, jax.random.PRNGKey(1))
    score_rate = float(optax.tree_utils.tree_get(st.score_opt,
                                                 'learning_rate'))
    assert score_rate == pytest.approx(float(sched(n)), abs=1e-12)
    assert float(m['learning_rate']) == pytest.approx(score_rate, abs=1e-12)
  assert score_rate == 0.0
