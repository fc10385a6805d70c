"""grad_accum_steps: a step on n micro-batches makes the update of the
unsplit batch (same noise, same mean), for the teacher and every
distillation step."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmd_jax.numerics import diffusion
from mmd_jax.blocks import microbatch
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.methods import emd
from mmd_jax.methods import moment_matching as mm
from mmd_jax.methods import teacher
from mmd_jax.models.mlp import ResMLP

from test_moment_matching import _random_params  # noqa: E402

SCHED = diffusion.Schedule('cosine')
B, N = 16, 4
TX = optax.sgd(0.1)   # the update is the gradient: nothing hides a difference


def _spec():
  return DenoiserSpec(ResMLP(width=16, num_blocks=1, num_classes=3), SCHED,
                      'v', num_classes=3)


def _batch():
  kx, ky = jax.random.split(jax.random.PRNGKey(11))
  return {'x': jax.random.normal(kx, (B, 2)),
          'label': jax.random.randint(ky, (B,), 0, 3)}


def _check_same(before, after_1, after_n):
  d1 = jax.tree.map(jnp.subtract, after_1, before)
  dn = jax.tree.map(jnp.subtract, after_n, before)
  flat1 = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(d1)])
  flatn = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(dn)])
  scale = float(jnp.max(jnp.abs(flat1)))
  assert scale > 1e-4   # a real update
  np.testing.assert_allclose(flatn, flat1, rtol=1e-4, atol=1e-5 * scale)


def _run(step, state, n_steps=1):
  key = jax.random.PRNGKey(3)
  step = jax.jit(step)
  for _ in range(n_steps):
    state, _ = step(state, _batch(), key)
  return state


def test_rows_draw_the_unsplit_noise():
  key = jax.random.PRNGKey(0)
  full = microbatch.ALL.normal(key, (12, 3))
  assert abs(float(jnp.std(microbatch.ALL.normal(key, (4000, 2)))) - 1) < .05
  parts = [microbatch.Rows(i, 4).normal(key, (3, 3)) for i in range(4)]
  for i, p in enumerate(parts):
    np.testing.assert_array_equal(p, full[i::4])
  # Split over 2 devices (blocks of 6 rows) and 3 micro-batches each.
  for d in range(2):
    for i in range(3):
      rows = microbatch.Rows(i, 3, d, 2)
      np.testing.assert_array_equal(rows.normal(key, (2, 3)),
                                    full[6 * d:6 * d + 6][i::3])
      assert rows.here(12) == 2
  assert len({int(microbatch.Rows(i, 3, d, 2).key(key)[-1])
              for i in range(3) for d in range(2)}) == 6
  pos, total = microbatch.Rows(2, 4).positions(3)
  np.testing.assert_array_equal(pos, [2, 6, 10])
  assert total == 12
  # A mean over micro-batches is the mean over the batch.
  x = jnp.arange(16.0)
  out = microbatch.accumulate(lambda mb, rows: jnp.mean(mb['x']), {'x': x}, 4)
  np.testing.assert_allclose(out, jnp.mean(x))
  with pytest.raises(ValueError, match='not divisible'):
    microbatch.split({'x': jnp.zeros(10)}, 4)


def test_teacher_step():
  spec = _spec()
  p0 = _random_params(spec, jax.random.PRNGKey(1), _batch()['x'])
  out = []
  for n in (1, N):
    hp = teacher.TeacherHParams(label_dropout=0.5, ema_decay=0.0,
                                stratified_t=True, grad_accum_steps=n)
    st = teacher.init(jax.random.PRNGKey(0), spec, hp, TX, _batch())
    st = st.replace(params=jax.tree.map(jnp.copy, p0))
    out.append(_run(teacher.step, st).params)
  _check_same(p0, *out)


def _mm_states(init, n, **kw):
  spec = _spec()
  theta = _random_params(spec, jax.random.PRNGKey(1), _batch()['x'])
  hp = mm.MMHParams(k=4, weighting='v', grad_accum_steps=n)
  return theta, init(jax.random.PRNGKey(0), theta, spec=spec, hp=hp, tx=TX,
                     **kw)


def test_alternating_step_aux_then_student():
  outs = []
  for n in (1, N):
    theta, st = _mm_states(mm.init_alternating, n)
    after_aux = _run(mm.alternating_step, st, 1)
    after_both = _run(mm.alternating_step, after_aux, 1)
    outs.append((after_aux.aux_params, after_both.student_params))
  _check_same(theta, outs[0][0], outs[1][0])   # phi's update
  _check_same(theta, outs[0][1], outs[1][1])   # eta's update


def test_parameter_step():
  spec = _spec()
  theta = _random_params(spec, jax.random.PRNGKey(1), _batch()['x'])
  precond = jax.tree.map(
      lambda l: 0.5 + jax.random.uniform(jax.random.PRNGKey(5), l.shape),
      theta)
  outs = []
  for n in (1, N // 2):   # each half-batch (A, B) has B/2 = 8 rows
    hp = mm.MMHParams(k=4, weighting='v', grad_accum_steps=n)
    st = mm.init_parameter(jax.random.PRNGKey(0), theta, precond, spec, hp, TX)
    outs.append(_run(mm.parameter_step, st).student_params)
  _check_same(theta, *outs)


def test_emd_step_generator_and_score():
  spec = _spec()
  theta = _random_params(spec, jax.random.PRNGKey(1), _batch()['x'])
  outs = []
  for n in (1, N):
    hp = emd.EMDHParams(langevin_steps=2, gamma_eps=0.3, gamma_z=0.05,
                        score_updates=2, grad_accum_steps=n)
    st = emd.init(jax.random.PRNGKey(0), theta, spec, hp, TX, TX)
    st = _run(emd.step, st)
    outs.append((st.generator_params, st.score_params))
  _check_same(theta, outs[0][0], outs[1][0])
  _check_same(theta, outs[0][1], outs[1][1])
