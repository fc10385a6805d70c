"""Report pieces without a run: seeds' mean and std, a job chain's cost, and
the leaderboard table."""
import numpy as np
import pytest

from mmd_jax.run import costs
from mmd_jax.evaluation import evaluate, report
from mmd_jax.plugins.base import Job


def test_mean_and_std_over_seeds():
  mean, std = evaluate.mean_and_std([{'a': 1.0, 'b': 2.0}, {'a': 3.0,
                                                            'b': 2.0}])
  assert mean == {'a': 2.0, 'b': 2.0}
  assert std['a'] == pytest.approx(np.sqrt(2.0)) and std['b'] == 0.0
  assert evaluate.mean_and_std([{'a': 1.0}]) == ({'a': 1.0}, None)


def test_seed_keys_keep_the_first_seed():
  import jax
  keys = evaluate.seed_keys(7, 3)
  np.testing.assert_array_equal(keys[0], jax.random.PRNGKey(7))
  assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3


def _job(name, steps, batch, evals, parent=''):
  return Job(method='m', name=name, model='m', steps=1, num_steps=steps,
             batch_size=batch, batch_key='b',
             needs=(f'{parent}/student',) if parent else (),
             teacher_evals_per_example=evals)


def test_a_job_cost_includes_the_jobs_it_starts_from():
  jobs = {'r1': _job('r1', 10, 4, 2.0), 'r2': _job('r2', 10, 4, 2.0, 'r1'),
          'r3': _job('r3', 5, 4, 2.0, 'r2')}
  metas = {'r1': {'train_seconds': 1.5}, 'r2': {'seconds_per_step': 0.5},
           'r3': None}
  c = costs.job_cost(jobs['r3'], jobs, lambda j: metas[j.name])
  assert c == {'train_examples': 100, 'teacher_evals': 200,
               'train_seconds': 6.5}
  none = costs.job_cost(jobs['r3'], jobs, lambda j: None)
  assert none['train_seconds'] is None and none['train_examples'] == 100


def test_leaderboard_table_has_mean_std_references_and_costs():
  cost = {'train_examples': 1_536_000, 'teacher_evals': 3_072_000,
          'train_seconds': 95.0}
  rows = [
      {'model': 'teacher', 'sampler': 'ancestral', 'steps': 2,
       'metrics': {'ed': 0.2}, 'metrics_std': {'ed': 0.01}},
      {'model': 'teacher', 'sampler': 'ancestral', 'steps': 256,
       'metrics': {'ed': 0.001}},
      {'model': 'pd', 'sampler': 'student', 'steps': 1,
       'metrics': {'ed': 0.5}, 'metrics_std': {'ed': 0.02}, 'cost': cost},
      {'model': 'pd', 'sampler': 'student', 'steps': 2,
       'metrics': {'ed': 0.05}, 'metrics_std': {'ed': 0.003}, 'cost': cost},
      {'model': 'cd', 'sampler': 'student', 'steps': 2,
       'metrics': {'ed': 0.04}, 'metrics_std': {'ed': 0.004}, 'cost': cost}]
  lines = report.leaderboard(rows, 'ed')
  text = '\n'.join(lines)
  assert '| method | k=1 | k=2 |' in text
  assert '| pd | 0.5 ± 0.02 | 0.05 ± 0.003 |' in text
  assert '| cd |  | 0.04 ± 0.004 |' in text
  # The teacher at the students' k only (not at 256).
  assert '| teacher (ancestral, reference) |  | 0.2 ± 0.01 |' in text
  assert '1.54M ex, 3.07M teacher evals, 95 s' in text
  assert report.leaderboard(rows[:2], 'ed') == []


def _nan_draw(params, key, shape, labels, steps, sampler='ancestral',
              guidance=0.0):
  import jax.numpy as jnp
  del params, key, labels, steps, sampler, guidance
  return jnp.full(shape, jnp.nan)


def test_nonfinite_samples_score_nan_and_the_report_is_still_written(
    tmp_path):
  import json
  import tiny
  from mmd_jax.data import load_dataset
  c = tiny.config('toy2d', 'tiny', {'eval.num_samples': 256,
                                    'eval.batch_size': 128})
  data = load_dataset(c.data)
  entry = evaluate.Entry(model='broken', sampler='student', steps=1,
                         draw=_nan_draw, params=None, shape=(2,))
  rep = evaluate.run(c, str(tmp_path), data, [entry])
  m = rep['rows'][0]['metrics']
  assert m['nonfinite_fraction'] == 1.0
  assert set(m) == set(rep['reference']) | {'nonfinite_fraction'}
  assert all(np.isnan(v) for k, v in m.items() if k != 'nonfinite_fraction')
  assert np.isnan(json.load(open(tmp_path / 'report.json'))['rows'][0][
      'metrics']['energy_distance'])
  assert (tmp_path / 'report.md').exists()
  assert (tmp_path / 'quality_vs_steps.png').exists()
