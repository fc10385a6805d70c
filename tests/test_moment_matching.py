"""Moment matching: the Algorithm 3 sign, gradient separation in Algorithm 2,
and a short run that must beat the teacher at 4 steps."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmd_jax.numerics import diffusion
from mmd_jax.blocks import microbatch
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.methods import moment_matching as mm
from mmd_jax.models.mlp import ResMLP

SCHED = diffusion.Schedule('cosine')


def _spec():
  return DenoiserSpec(ResMLP(width=16, num_blocks=1), SCHED, 'v')


def _random_params(spec, key, x, scale=0.3):
  """Init, then perturb so the zero-initialised heads are not zero."""
  p = spec.init_params(key, x)
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  return jax.tree.unflatten(tree, [
      l + scale * jax.random.normal(k, l.shape, l.dtype)
      for l, k in zip(leaves, keys)])


def _tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                             jax.tree.leaves(b)))


def test_parameter_surrogate_gradient_matches_finite_difference():
  """d/d eta of 1/2 gA^T Lambda gB (z_s held fixed) = grad L_A + grad L_B,
  where L_A is the Algorithm 3 surrogate with batch A's student output and
  L_B the same with A and B swapped. A flipped sign fails this."""
  with jax.enable_x64(True):
    spec = _spec()
    key = jax.random.PRNGKey(0)
    n = 6
    x0 = jnp.zeros((n, 2), jnp.float64)
    theta = jax.tree.map(lambda a: a.astype(jnp.float64),
                         _random_params(spec, key, x0))
    eta = jax.tree.map(lambda a: a.astype(jnp.float64),
                       _random_params(spec, jax.random.PRNGKey(5), x0))
    precond = jax.tree.map(
        lambda a: jnp.exp(jax.random.normal(jax.random.PRNGKey(7), a.shape,
                                            jnp.float64)), theta)
    hp = mm.MMHParams(k=4, weighting='v')
    ks = jax.random.split(jax.random.PRNGKey(3), 8)

    def fixed(kz, kt):
      s, t = mm.sample_times(kt, n, hp.k)
      lam_s, lam_t = SCHED(s).astype(jnp.float64), SCHED(t).astype(jnp.float64)
      return (jax.random.normal(kz, (n, 2), jnp.float64),
              jax.random.normal(jax.random.fold_in(kz, 1), (n, 2), jnp.float64),
              lam_t, lam_s)

    zt_a, zs_a, lt_a, ls_a = fixed(ks[0], ks[1])
    zt_b, zs_b, lt_b, ls_b = fixed(ks[2], ks[3])
    w_a = diffusion.loss_weight('v', ls_a)
    w_b = diffusion.loss_weight('v', ls_b)

    def teacher_grad(x_tilde, z_s, lam_s, w):
      def loss(th):
        r = x_tilde - spec.x_hat(th, z_s, lam_s)
        return jnp.mean(w * jnp.mean(r * r, axis=-1))
      return jax.grad(loss)(theta)

    def objective(e):
      ga = teacher_grad(spec.x_hat(e, zt_a, lt_a), zs_a, ls_a, w_a)
      gb = teacher_grad(spec.x_hat(e, zt_b, lt_b), zs_b, ls_b, w_b)
      return 0.5 * _tree_dot(ga, jax.tree.map(jnp.multiply, precond, gb))

    def draw(e, zt, zs, lt, ls):
      x_tilde, vjp = jax.vjp(lambda p: spec.x_hat(p, zt, lt), e)
      return mm._Draw(ls, zs, x_tilde, vjp, None)

    def surrogate_grad(e, first, second):
      d1, d2 = draw(e, *first), draw(e, *second)
      w1, j_nu, monitor = mm.parameter_losses(spec, theta, precond, d1, d2, hp)
      zt, _, lt, _ = first
      g = jax.grad(lambda p: -jnp.mean(
          w1 * jnp.mean(spec.x_hat(p, zt, lt) * j_nu, axis=-1)))(e)
      return g, monitor

    a = (zt_a, zs_a, lt_a, ls_a)
    b = (zt_b, zs_b, lt_b, ls_b)
    g_a, monitor = surrogate_grad(eta, a, b)
    g_b, _ = surrogate_grad(eta, b, a)
    # The logged monitor is the two-batch objective itself.
    np.testing.assert_allclose(float(monitor), float(objective(eta)),
                               rtol=1e-9)

    direction = jax.tree.map(
        lambda l: jax.random.normal(jax.random.PRNGKey(11), l.shape,
                                    jnp.float64), eta)
    h = 1e-5
    plus = jax.tree.map(lambda p, d: p + h * d, eta, direction)
    minus = jax.tree.map(lambda p, d: p - h * d, eta, direction)
    fd = (objective(plus) - objective(minus)) / (2 * h)
    analytic = _tree_dot(jax.tree.map(jnp.add, g_a, g_b), direction)
    assert abs(float(fd)) > 1e-6  # the check is not vacuous
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)
    # The plus sign (the bug the paper's printed algorithm invites) fails.
    assert abs(float(-analytic) - float(fd)) > 1e-3 * abs(float(fd))


def test_parameter_step_uses_its_surrogate():
  """The jitted step's gradient equals the surrogate's gradient computed
  with jax.grad, z_s held fixed (no gradient through z_s)."""
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
  theta = _random_params(spec, jax.random.PRNGKey(0), x)
  precond = jax.tree.map(lambda a: jnp.full_like(a, 2.0), theta)
  hp = mm.MMHParams(k=4, weighting='v')
  state = mm.init_parameter(jax.random.PRNGKey(2), theta, precond, spec, hp,
                            optax.sgd(1.0))
  key = jax.random.PRNGKey(9)
  new, metrics = jax.jit(mm.parameter_step)(state, {'x': x}, key)
  step_grad = jax.tree.map(lambda a, b: a - b, state.student_params,
                           new.student_params)
  # Independent recomputation with the same randomness.
  k = jax.random.fold_in(key, 0)
  k_a, k_b = jax.random.split(k)
  xa, xb = x.reshape(4, 2, 2)[:, 0], x.reshape(4, 2, 2)[:, 1]
  d_a = mm._draw(k_a, spec, theta, xa, None, hp)
  d_b = mm._draw(k_b, spec, theta, xb, None, hp)
  w_a, j_nu, monitor = mm.parameter_losses(spec, theta, precond, d_a, d_b, hp)
  s, t = mm.sample_times(jax.random.split(k_a, 3)[0], 4, hp.k, hp.s_range)
  z_t = diffusion.diffuse(xa, SCHED(t), microbatch.ALL.normal(
      jax.random.split(k_a, 3)[1], xa.shape))
  want = jax.grad(lambda p: -jnp.mean(w_a * jnp.mean(
      spec.x_hat(p, z_t, SCHED(t)) * j_nu, axis=-1)))(theta)
  for a, b in zip(jax.tree.leaves(step_grad), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  # float32, summed in another order inside the jitted step.
  np.testing.assert_allclose(metrics['monitor'], monitor, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(new.teacher_params), jax.tree.leaves(theta)):
    np.testing.assert_array_equal(a, b)


def test_alternating_step_separates_phi_and_eta():
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
  theta = _random_params(spec, jax.random.PRNGKey(0), x)
  hp = mm.MMHParams(k=4, weighting='v')
  state = mm.init_alternating(jax.random.PRNGKey(2), theta, spec, hp,
                              optax.sgd(1.0))
  # Make student and aux differ from the teacher so every term is non-zero.
  state = state.replace(
      student_params=_random_params(spec, jax.random.PRNGKey(3), x, 0.1),
      aux_params=_random_params(spec, jax.random.PRNGKey(4), x, 0.1))
  key = jax.random.PRNGKey(9)
  step = jax.jit(mm.alternating_step)

  def same(a, b):
    return all(np.array_equal(u, v) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  def draw(st):
    k = jax.random.fold_in(key, st.step)
    return mm._draw(k, spec, st.student_params, x, None, hp)

  # Even step: only phi moves, by exactly grad L(phi) with x~ as data.
  s1, m1 = step(state, {'x': x}, key)
  assert same(s1.student_params, state.student_params)
  assert same(s1.teacher_params, theta)
  d = draw(state)
  x_t = spec.x_hat(theta, d.z_s, d.lam_s)
  w = diffusion.loss_weight('v', d.lam_s)
  g_phi = jax.grad(lambda p: jnp.mean(w * (
      jnp.mean((d.x_tilde - spec.x_hat(p, d.z_s, d.lam_s))**2, -1) +
      jnp.mean((x_t - spec.x_hat(p, d.z_s, d.lam_s))**2, -1))))(state.aux_params)
  for new, old, g in zip(jax.tree.leaves(s1.aux_params),
                         jax.tree.leaves(state.aux_params),
                         jax.tree.leaves(g_phi)):
    np.testing.assert_allclose(old - new, g, rtol=1e-3, atol=1e-5)
  assert float(m1['aux_step']) == 1.0

  # Odd step: only eta moves, by grad of w x~^T sg(g_phi - g_theta), z_s fixed.
  s2, m2 = step(s1, {'x': x}, key)
  assert same(s2.aux_params, s1.aux_params)
  assert same(s2.teacher_params, theta)
  d = draw(s1)
  diff = (spec.x_hat(s1.aux_params, d.z_s, d.lam_s) -
          spec.x_hat(theta, d.z_s, d.lam_s))
  k = jax.random.fold_in(key, s1.step)
  s, t = mm.sample_times(jax.random.split(k, 3)[0], 8, hp.k, hp.s_range)
  z_t = diffusion.diffuse(x, SCHED(t), microbatch.ALL.normal(
      jax.random.split(k, 3)[1], x.shape))
  w = diffusion.loss_weight('v', SCHED(s))
  g_eta = jax.grad(lambda p: jnp.mean(w * jnp.mean(
      spec.x_hat(p, z_t, SCHED(t)) * diff, -1)))(s1.student_params)
  for new, old, g in zip(jax.tree.leaves(s2.student_params),
                         jax.tree.leaves(s1.student_params),
                         jax.tree.leaves(g_eta)):
    np.testing.assert_allclose(old - new, g, rtol=1e-3, atol=1e-5)
  assert float(m2['aux_step']) == 0.0


@pytest.mark.parametrize('renoise', ['conditional', 'marginal'])
def test_renoise_variants(renoise):
  """Conditional z_s depends on z_t; marginal z_s only on x~."""
  hp = mm.MMHParams(k=4, renoise=renoise)
  x_tilde = jnp.ones((4000, 1))
  z_t = jnp.full((4000, 1), 3.0)
  lam_t, lam_s = jnp.full((4000,), -1.0), jnp.full((4000,), 1.0)
  z = mm._renoise(jax.random.PRNGKey(0), hp, z_t, x_tilde, lam_t, lam_s)
  a_s, s_s = diffusion.alpha_sigma(1.0)
  if renoise == 'marginal':
    np.testing.assert_allclose(jnp.mean(z), a_s, atol=0.03)
    np.testing.assert_allclose(jnp.std(z), s_s, atol=0.03)
  else:
    mean, var = diffusion.posterior(z_t, x_tilde, lam_t, lam_s)
    np.testing.assert_allclose(jnp.mean(z), mean[0, 0], atol=0.03)
    np.testing.assert_allclose(jnp.var(z), var[0, 0], rtol=0.05)


def test_preconditioner_bias_correction():
  nu = {'a': jnp.array([0.01, 0.04])}
  lam = mm.preconditioner(nu, jnp.asarray(1), b2=0.99, eps=0.0)
  # v_hat = nu / (1 - 0.99) -> 1 / sqrt(v_hat)
  np.testing.assert_allclose(lam['a'], 1 / np.sqrt(np.array([1.0, 4.0])),
                             rtol=1e-5)


@pytest.mark.parametrize('k,s_range,s_max', [(8, 'grid', 7 / 8), (8, 'auto', 7 / 8),
                                             (1, 'auto', 1.0), (1, 'grid', 1.0),
                                             (4, 'full', 1.0)])
def test_sample_times(k, s_range, s_max):
  s, t = mm.sample_times(jax.random.PRNGKey(0), 20_000, k, s_range)
  assert float(s.min()) >= 0.0 and float(s.max()) <= s_max
  assert float(s.max()) > 0.98 * s_max  # the whole range is used
  assert bool(jnp.all(t >= s)) and bool(jnp.all(t - s <= 1.0 / k + 1e-6))
  assert float(t.max()) <= 1.0
  # Continuous t, not only grid points.
  assert len(np.unique(np.round(np.asarray(t) * k, 5))) > 1000


def test_alternating_learning_rate_follows_the_global_step():
  """Algorithm 2's two networks update on alternate steps but share one
  schedule on the global step: warm-up ends after `warmup_steps` global
  steps and the rate is 0 at the last step. (A schedule on each
  optimiser's own count warms up for 2 * warmup_steps and ends at about
  half the peak.)"""
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  theta = _random_params(spec, jax.random.PRNGKey(1), x)
  peak, warmup, total = 1e-3, 4, 12
  tx = mm.mm_optimizer(peak, warmup, total)
  st = mm.init_alternating(jax.random.PRNGKey(2), theta, spec,
                           mm.MMHParams(k=4), tx)
  step = jax.jit(mm.alternating_step)
  rates = []
  for _ in range(total):
    st, m = step(st, {'x': x}, jax.random.PRNGKey(3))
    rates.append(float(m['learning_rate']))
  want = [peak * n / warmup if n <= warmup else
          peak * (total - 1 - n) / (total - 1 - warmup) for n in range(total)]
  np.testing.assert_allclose(rates, want, rtol=1e-5, atol=1e-12)
  assert rates[warmup] == pytest.approx(peak) and rates[-1] == 0.0
  # Both networks moved at those rates: the last update, the student's,
  # changed nothing.
  before = jax.tree.map(jnp.copy, st.student_params)
  st, m = step(st.replace(step=jnp.asarray(total - 1)), {'x': x},
               jax.random.PRNGKey(4))
  assert float(m['learning_rate']) == 0.0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(st.student_params)):
    np.testing.assert_array_equal(a, b)


def test_one_step_generator_form_reads_the_student_at_the_fixed_logsnr():
  """k = 1: the student sees pure noise (t = 1) at log-SNR k1_logsnr, in
  training and in sampling; k1_generator=False keeps the t = 1 form."""
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) + 3.0
  params = _random_params(spec, jax.random.PRNGKey(1), x)
  hp = mm.MMHParams(k=1, k1_logsnr=-2.0)
  key = jax.random.PRNGKey(2)
  d = mm._draw(key, spec, params, x, None, hp)
  eps = microbatch.ALL.normal(jax.random.split(key, 3)[1], x.shape)
  np.testing.assert_array_equal(d.z_t, eps)   # no data in z_t
  np.testing.assert_allclose(
      d.x_tilde, spec.x_hat(params, eps, jnp.full((64,), -2.0)), rtol=1e-6)
  np.testing.assert_allclose(d.lam_t, SCHED(1.0) * np.ones(64), rtol=1e-6)
  # The old form diffuses the data to t <= 1 and reads the net there.
  d_old = mm._draw(key, spec, params, x, None,
                   mm.MMHParams(k=1, k1_generator=False))
  assert float(jnp.abs(d_old.z_t - eps).max()) > 1e-4
  assert float(d_old.lam_t.max()) > float(SCHED(1.0)) + 0.1

  k_s = jax.random.PRNGKey(3)
  z1 = jax.random.normal(jax.random.split(k_s)[0], (64, 2))
  np.testing.assert_allclose(
      mm.student_sample(spec, params, k_s, (64, 2), 1, hp=hp),
      spec.x_hat(params, z1, jnp.full((64,), -2.0)), rtol=1e-6)
  np.testing.assert_array_equal(
      mm.student_sample(spec, params, k_s, (64, 2), 1,
                        hp=mm.MMHParams(k=1, k1_generator=False)),
      spec.sample(params, k_s, (64, 2), 1))


def test_alternating_step_updates_in_place():
  """The donated step copies no parameter-sized buffer: each network's
  update writes it in place or passes it through (a select between the two
  networks' updates made XLA copy the whole trained state twice a step)."""
  spec = DenoiserSpec(ResMLP(width=64, num_blocks=1), SCHED, 'v')
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  theta = _random_params(spec, jax.random.PRNGKey(1), x)
  st = mm.init_alternating(jax.random.PRNGKey(2), theta, spec,
                           mm.MMHParams(k=4), mm.mm_optimizer(1e-3, 2, 10))
  hlo = jax.jit(mm.alternating_step, donate_argnums=(0,)).lower(
      st, {'x': x}, jax.random.PRNGKey(3)).compile().as_text()
  assert ' f32[64,64]{1,0} copy(' not in hlo


def test_alternating_options_ratio_constant_rate_and_student_ema():
  """aux_updates = 2: two auxiliary updates per student update (aux_step
  1, 1, 0, ...); decay=False: the rate stays at its peak after the
  warm-up; student_ema: the sampling weights are the bias-corrected EMA of
  the student after each of its own updates."""
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  theta = _random_params(spec, jax.random.PRNGKey(1), x)
  peak, d = 1e-3, 0.5
  tx = mm.mm_optimizer(peak, 2, 9, decay=False)
  st = mm.init_alternating(jax.random.PRNGKey(2), theta, spec,
                           mm.MMHParams(k=4, aux_updates=2, student_ema=d),
                           tx)
  step = jax.jit(mm.alternating_step)
  aux, rates, students = [], [], []
  for _ in range(9):
    prev = st.student_params
    st, m = step(st, {'x': x}, jax.random.PRNGKey(3))
    aux.append(float(m['aux_step']))
    rates.append(float(m['learning_rate']))
    moved = any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(prev), jax.tree.leaves(st.student_params)))
    assert moved == (aux[-1] == 0.0)
    if moved:
      students.append(st.student_params)
  assert aux == [1, 1, 0] * 3
  np.testing.assert_allclose(rates, [0, peak / 2] + [peak] * 7, rtol=1e-6)
  n = len(students)
  assert n == 3 and int(st.student_ema_updates) == 3
  want = jax.tree.map(lambda *ps: sum(
      (1 - d) * d ** (n - 1 - i) * p for i, p in enumerate(ps)) / (1 - d ** n),
                      *students)
  for a, b in zip(jax.tree.leaves(st.sampling_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Off (the default): the student samples, and the state holds the
  # fields it always had, so that earlier checkpoints restore.
  plain = mm.init_alternating(jax.random.PRNGKey(2), theta, spec,
                              mm.MMHParams(k=4), tx)
  assert type(plain) is mm.AlternatingState
  assert [f.name for f in dataclasses.fields(plain)] == [
      'step', 'teacher_params', 'student_params', 'aux_params',
      'student_opt', 'aux_opt', 'rng', 'spec', 'hparams', 'tx']
  assert plain.sampling_params is plain.student_params
