"""The non-finite guard, on a toy step and through the command line."""
import os
import subprocess
import sys

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.blocks import guard


@flax.struct.dataclass
class _State:
  step: jax.Array
  w: jax.Array


def _step(state, batch, key):
  """Adds the batch; the loss is NaN when the batch says so."""
  del key
  w = state.w + batch['x']
  loss = jnp.where(batch['bad'], jnp.nan, jnp.sum(w))
  return state.replace(step=state.step + 1, w=w), {'loss': loss,
                                                   'grad_norm': jnp.ones(())}


def test_bad_steps_change_nothing_are_counted_and_trip():
  g = jax.jit(guard.wrap(_step, max_bad_run=3))
  state = _State(step=jnp.zeros((), jnp.int32), w=jnp.zeros(2))
  counts = guard.init_counts()
  bad = [0, 1, 0, 1, 1, 0, 1, 1, 1, 1]
  ws = []
  for b in bad:
    state, metrics, counts = g(state, {'x': jnp.ones(2), 'bad': jnp.asarray(
        bool(b))}, None, counts)
    ws.append(float(state.w[0]))
  # Good steps add one; bad steps leave w alone (the step counter moves on).
  assert ws == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
  assert int(state.step) == 10
  assert int(counts['total']) == 7 and int(metrics['nonfinite_steps']) == 7
  # Three in a row first at the 9th step (runs of 1, 2, then 4).
  assert int(counts['tripped_at']) == 9 and int(counts['run']) == 4
  # A non-finite new state (finite loss) is also refused.
  inf_state = _State(step=jnp.zeros((), jnp.int32), w=jnp.zeros(2))
  out, _, c = g(inf_state, {'x': jnp.full(2, jnp.inf), 'bad': jnp.asarray(
      False)}, None, guard.init_counts())
  assert np.all(np.isfinite(out.w)) and int(c['total']) == 1


def test_diverging_run_stops_with_one_line_and_saves_only_finite(repo_root,
                                                                 tmp_path):
  w = tmp_path / 'w'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'mmd_jax.main', '--config=configs/toy2d.py:tiny',
       f'--workdir={w}', '--config.teacher.learning_rate=1e30',
       '--config.checkpoint.every_steps=1', '--config.max_nonfinite_steps=5'],
      cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith('error: teacher: 5 non-finite steps in a row'), line
  assert 'last good checkpoint: step' in line
  # Every checkpoint written holds finite parameters.
  from mmd_jax.run.stage_dir import open_stage
  state = open_stage(str(w / 'teacher')).state
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree.leaves(state.params))
  assert not (w / 'report.json').exists()


@flax.struct.dataclass
class _AdamState:
  step: jax.Array
  params: jax.Array
  frozen: jax.Array
  opt_state: object


def test_guard_reverts_optimizer_state_and_keeps_frozen_leaves():
  """A gradient with a NaN poisons Adam's moments and, through the update,
  the parameters: the step is refused and every leaf, moments included, is
  the old one."""
  import optax
  tx = optax.adam(0.1)

  def step(state, batch, key):
    del key
    g = batch['g']
    u, opt = tx.update(g, state.opt_state, state.params)
    return state.replace(step=state.step + 1,
                         params=optax.apply_updates(state.params, u),
                         opt_state=opt), {'loss': jnp.sum(state.params)}

  g = jax.jit(guard.wrap(step, max_bad_run=3))
  p = jnp.ones(3)
  state = _AdamState(step=jnp.zeros((), jnp.int32), params=p,
                     frozen=jnp.full(2, 7.0), opt_state=tx.init(p))
  state, _, c = g(state, {'g': jnp.ones(3)}, None, guard.init_counts())
  before = jax.tree.map(np.asarray, state)
  state, _, c = g(state, {'g': jnp.array([1.0, jnp.nan, 1.0])}, None, c)
  assert int(c['total']) == 1 and int(state.step) == 2
  for a, b in zip(jax.tree.leaves(before.replace(step=0)),
                  jax.tree.leaves(state.replace(step=0))):
    np.testing.assert_array_equal(a, b)
  state, _, c = g(state, {'g': jnp.ones(3)}, None, c)
  assert int(c['total']) == 1 and np.all(np.isfinite(state.params))


def test_apply_if_finite_when_updates_only_the_chosen_part():
  """`when`: the update runs only where it holds and the state is finite;
  the returned flag is finiteness alone; no state copies in the program."""
  def apply(s, g):
    return jax.tree.map(lambda p: p - g, s), jnp.float32(1.0)

  part = {'w': jnp.ones((4,)), 'b': jnp.zeros((2,))}
  for when, loss, want_ok, want_step in ((True, 1.0, True, True),
                                         (False, 1.0, True, False),
                                         (True, np.nan, False, False)):
    new, rate, ok = guard.apply_if_finite(
        (jnp.float32(loss),), apply, part, jnp.float32(0.5),
        when=jnp.asarray(when))
    assert bool(ok) == want_ok
    assert float(rate) == (1.0 if want_step else 0.0)
    want = 0.5 if want_step else 1.0
    np.testing.assert_array_equal(new['w'], np.full((4,), want, np.float32))
  with guard.disabled():   # `when` still holds with the guard off
    new, _, _ = guard.apply_if_finite((jnp.float32(np.nan),), apply, part,
                                      jnp.float32(0.5),
                                      when=jnp.asarray(False))
  np.testing.assert_array_equal(new['w'], np.ones((4,), np.float32))

  def two_parts(a, b, g, is_a):
    a, _, _ = guard.apply_if_finite((g,), apply, a, g, when=is_a)
    b, _, _ = guard.apply_if_finite((g,), apply, b, g, when=~is_a)
    return a, b
  big = jnp.zeros((1 << 16,))
  hlo = jax.jit(two_parts, donate_argnums=(0, 1)).lower(
      big, big + 1, jnp.float32(0.5), jnp.asarray(True)).compile().as_text()
  assert 'f32[65536]{0} copy(' not in hlo
