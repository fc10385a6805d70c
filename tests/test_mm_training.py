"""A short moment-matching run must beat the teacher's own 4-step sampler."""
import jax
import numpy as np

from mmd_jax.numerics import diffusion
from mmd_jax.data import toy2d
from mmd_jax.data.batches import BatchStream
from mmd_jax.numerics.denoiser import DenoiserSpec
from mmd_jax.evaluation import toy_metrics
from mmd_jax.methods import moment_matching as mm
from mmd_jax.methods import teacher
from mmd_jax.models.mlp import ResMLP


def _train(step, state, stream, n, key):
  step = jax.jit(step, donate_argnums=0)
  for i in range(n):
    state, _ = step(state, stream.local_batch_at(i), key)
  return state


def test_short_alternating_run_beats_the_teacher_at_4_steps():
  mix = toy2d.get_mixture('asymmetric_mixture')
  data = {'x': mix.sample(np.random.default_rng(0), 50_000)}
  spec = DenoiserSpec(ResMLP(width=64, num_blocks=2, block_conditioning=False),
                      diffusion.Schedule('cosine'), 'v')
  tx, _ = teacher.make_optimizer(2e-3, 100, 2000, 1.0, decay=True)
  stream = BatchStream(data, 256, seed=0)
  t_state = teacher.init(jax.random.PRNGKey(0), spec, teacher.TeacherHParams(),
                         tx, stream.local_batch_at(0))
  t_state = _train(teacher.step, t_state, stream, 2000, jax.random.PRNGKey(1))
  theta = t_state.sampling_params

  hp = mm.MMHParams(k=4, weighting='v')
  s_state = mm.init_alternating(jax.random.PRNGKey(2), theta, spec, hp,
                                mm.mm_optimizer(3e-4, 20, 400))
  s_state = _train(mm.alternating_step, s_state, BatchStream(data, 256, 1),
                   400, jax.random.PRNGKey(3))

  real = mix.sample(np.random.default_rng(1), 3000)
  key = jax.random.PRNGKey(4)  # the same noise for both: a paired comparison
  ed_teacher = toy_metrics.energy_distance(
      spec.sample(theta, key, (3000, 2), 4), real)
  ed_student = toy_metrics.energy_distance(
      spec.sample(s_state.student_params, key, (3000, 2), 4), real)
  print(f'ED at 4 steps: teacher {ed_teacher:.4f} student {ed_student:.4f}')
  assert ed_student < ed_teacher
