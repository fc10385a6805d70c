"""The samplers' time spacing (sampling.time_grid) and its tuning over
training seeds (mmd_jax.evaluation.tune_sampler)."""
import json

import numpy as np
import pytest

import tiny
from mmd_jax.numerics import sampling
from mmd_jax.run.checks import ConfigError


@pytest.mark.parametrize('k', [1, 2, 4, 8])
def test_time_grid(k):
  for i in range(k):
    t, s = sampling.time_grid(i, k)
    assert (t, s) == (1.0 - i / k, 1.0 - i / k - 1.0 / k)   # bit for bit
    t2, s2 = sampling.time_grid(i, k, 2.0)
    assert float(t2) == pytest.approx(t ** 2)
    assert float(s2) == pytest.approx(max(s, 0.0) ** 2, abs=1e-12)
  assert float(sampling.time_grid(k - 1, k, 3.0)[1]) == 0.0


def test_tuning_chooses_on_one_seed_and_reports_on_fresh_ones(tmp_path):
  """Two consistency copies: the fresh-seed score at power 1 is what the
  report says of each copy, the chosen power is the tuning seed's argmin,
  and the config line it prints puts that power in the report."""
  from mmd_jax.evaluation import tune_sampler
  from mmd_jax.run import runner
  from mmd_jax.run.stage_dir import open_stage
  w = tmp_path / 'cd'
  over = {'stages': ('teacher', 'consistency', 'evaluate'), 'train_seeds': 2,
          'distill.sampling_steps': (1, 2), 'eval.num_seeds': 2,
          'eval.teacher_steps': (2,)}
  tiny.run('toy2d', 'tiny', w, over)
  rep = json.load(open(w / 'report.json'))
  row = next(r for r in rep['rows'] if r['model'] == 'consistency'
             and r['steps'] == 2)
  stages = [open_stage(str(w / d)) for d in ('consistency_k1',
                                             'consistency_k1_seed1')]
  result = tune_sampler.tune(stages, [2], [1.0, 3.0], num_seeds=2)
  assert result['metric'] == 'energy_distance'
  per_power = result['tuning'][2]
  assert result['chosen'][2] == min(per_power, key=lambda p: np.mean(
      per_power[p]))
  assert per_power[1.0] != per_power[3.0]
  fresh = result['fresh'][2]
  np.testing.assert_allclose(
      fresh['default'], [c['metrics']['energy_distance']
                         for c in row['train_seeds']], rtol=1e-6)
  # The tuned power, set in the config, is what evaluation then reports.
  line = tune_sampler.config_line(result, 'consistency.time_powers')
  assert line == f"--config.consistency.time_powers=((2,{result['chosen'][2]:g}),)"
  tuned = tiny.config('toy2d', 'tiny', {
      **over, 'consistency.time_powers': ((2, 3.0),)})
  runner.evaluate_workdir(tuned, str(w))
  rep = json.load(open(w / 'report.json'))
  row = next(r for r in rep['rows'] if r['model'] == 'consistency'
             and r['steps'] == 2)
  want = tune_sampler.tune(stages, [2], [3.0], num_seeds=2)['fresh'][2]
  np.testing.assert_allclose(
      want['tuned'], [c['metrics']['energy_distance']
                      for c in row['train_seeds']], rtol=1e-6)
  md = tune_sampler.markdown(result)
  assert '| 2 |' in md and 'chosen − 1' in md


def test_teacher_time_powers_change_only_their_k(tmp_path):
  from mmd_jax.run import runner
  w = tmp_path / 't'
  over = {'stages': ('teacher', 'evaluate'), 'eval.teacher_steps': (2, 4)}
  tiny.run('toy2d', 'tiny', w, over)
  before = {r['steps']: r['metrics'] for r in
            json.load(open(w / 'report.json'))['rows']}
  runner.evaluate_workdir(tiny.config('toy2d', 'tiny', {
      **over, 'eval.time_powers': ((4, 2.0),)}), str(w))
  after = {r['steps']: r['metrics'] for r in
           json.load(open(w / 'report.json'))['rows']}
  assert after[2] == before[2] and after[4] != before[4]
  with pytest.raises(ConfigError, match='^config.eval.time_powers: '):
    runner.evaluate_workdir(tiny.config('toy2d', 'tiny', {
        **over, 'eval.time_powers': ((8, 2.0),)}), str(w))


def test_student_time_powers_change_their_own_method_only(tmp_path):
  """Each student's sampler has its own key (distill.alternating_ and
  distill.parameter_time_powers, progressive.time_powers): it changes that
  method's row and leaves the others alone, and a k no student has is one
  line."""
  from mmd_jax.run import runner
  w = tmp_path / 's'
  over = {'stages': ('teacher', 'mm_alternating', 'mm_parameter',
                     'progressive', 'evaluate'),
          'distill.sampling_steps': (2,), 'eval.teacher_steps': (2,)}
  tiny.run('toy2d', 'tiny_mm', w, over)

  def rows():
    return {r['model']: r['metrics']['energy_distance'] for r in
            json.load(open(w / 'report.json'))['rows']}
  base = rows()
  keys = {'mm_alternating': 'distill.alternating_time_powers',
          'mm_parameter': 'distill.parameter_time_powers',
          'progressive': 'progressive.time_powers'}
  for model, key in keys.items():
    runner.evaluate_workdir(tiny.config('toy2d', 'tiny_mm', {
        **over, key: ((2, 3.0),)}), str(w))
    now = rows()
    assert now[model] != base[model], key
    for other in ('teacher', *keys):
      if other != model:
        assert now[other] == base[other], (key, other)
  for key in keys.values():
    with pytest.raises(ConfigError, match=f'^config.{key}: '):
      runner.evaluate_workdir(tiny.config('toy2d', 'tiny_mm', {
          **over, key: ((4, 2.0),)}), str(w))
