"""config.train_seeds: independent copies of every student job, their rows
merged with both stds, and paired differences over training seeds."""
import json
import os

import numpy as np
import pytest
from scipy import stats

import tiny
from mmd_jax.evaluation import across_seeds, report, train_seeds
from mmd_jax.run import plan as plan_lib
from mmd_jax.run.checks import ConfigError


def test_plan_copies_students_not_the_teacher():
  c = tiny.config('toy2d', 'tiny_mm', {
      'train_seeds': 3, 'progressive.start_steps': 8,
      'stages': ('teacher', 'mm_alternating', 'progressive', 'evaluate')})
  jobs = plan_lib.make_plan(c).jobs
  names = [p.job.name for p in jobs]
  assert names == [
      'teacher', 'mm_alternating_k2', 'progressive_k4', 'progressive_k2',
      'mm_alternating_k2_seed1', 'progressive_k4_seed1',
      'progressive_k2_seed1', 'mm_alternating_k2_seed2',
      'progressive_k4_seed2', 'progressive_k2_seed2']
  by = {p.job.name: p.job for p in jobs}
  # A chain is copied whole: round 2 of copy 1 starts from round 1 of copy 1.
  assert by['progressive_k2_seed1'].needs == ('progressive_k4_seed1/student',)
  assert by['progressive_k2'].needs == ('progressive_k4/student',)
  assert by['teacher'].train_seed is None
  assert [by[f'mm_alternating_k2{s}'].meta['train_seed']
          for s in ('', '_seed1', '_seed2')] == [0, 1, 2]
  salts = {by[n].data_salt for n in ('mm_alternating_k2',
                                     'mm_alternating_k2_seed1',
                                     'mm_alternating_k2_seed2')}
  assert len(salts) == 3
  # One copy: the jobs as they always were (no train_seed in stage.json).
  one = plan_lib.make_plan(tiny.config('toy2d', 'tiny_mm')).jobs
  assert [p.job.name for p in one] == ['teacher', 'mm_alternating_k2',
                                       'mm_parameter_k2']
  assert all(p.job.train_seed is None and 'train_seed' not in p.job.meta
             for p in one)


@pytest.mark.parametrize('value', [0, -1])
def test_bad_train_seeds_is_one_line(value):
  with pytest.raises(ConfigError, match=r'^config.train_seeds: must be'):
    plan_lib.make_plan(tiny.config('toy2d', 'tiny_mm', {'train_seeds': value}))


def _row(model, seed, ed, eval_std=None, k=8):
  r = {'model': model, 'sampler': 'student', 'steps': k,
       'metrics': {'energy_distance': ed}, 'train_seed': seed,
       'cost': {'train_examples': 10, 'teacher_evals': 20,
                'train_seconds': 2.0 + seed}}
  if eval_std is not None:
    r['metrics_std'] = {'energy_distance': eval_std}
    r['num_seeds'] = 3
  return r


def test_merge_means_and_both_stds():
  teacher = {'model': 'teacher', 'sampler': 'ancestral', 'steps': 8,
             'metrics': {'energy_distance': 0.013}}
  rows = train_seeds.merge([
      teacher, _row('mm', 0, 0.002, 1e-4), _row('cd', 0, 0.010, 3e-4),
      _row('mm', 1, 0.008, 3e-4), _row('cd', 1, 0.007, 1e-4),
      _row('mm', 2, 0.005, 2e-4), _row('cd', 2, 0.013, 2e-4)])
  assert [r['model'] for r in rows] == ['teacher', 'mm', 'cd']
  assert rows[0] is teacher
  mm = rows[1]
  assert mm['metrics']['energy_distance'] == pytest.approx(0.005)
  assert mm['metrics_std']['energy_distance'] == pytest.approx(0.003)
  assert mm['eval_seed_std']['energy_distance'] == pytest.approx(2e-4)
  assert mm['num_train_seeds'] == 3 and mm['num_seeds'] == 3
  assert mm['std_over'] == 'train_seeds'
  assert [c['train_seed'] for c in mm['train_seeds']] == [0, 1, 2]
  assert mm['cost']['train_seconds'] == pytest.approx(3.0)
  assert 'train_seed' not in mm


def test_a_diverged_copy_makes_the_cell_nan():
  rows = train_seeds.merge([_row('mm', 0, 0.002), _row('mm', 1, float('nan'))])
  assert np.isnan(rows[0]['metrics']['energy_distance'])


def test_paired_interval_is_the_t_interval_of_the_differences():
  a = train_seeds.merge([_row('mm', s, v) for s, v in
                         enumerate((0.002, 0.008, 0.005))])[0]
  b = train_seeds.merge([_row('cd', s, v) for s, v in
                         enumerate((0.010, 0.007, 0.013))])[0]
  d = train_seeds.paired(a, b, 'energy_distance')
  diffs = np.array([-0.008, 0.001, -0.008])
  half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
  assert d['n'] == 3
  assert d['mean'] == pytest.approx(diffs.mean())
  assert d['half_width'] == pytest.approx(half)
  assert half == pytest.approx(4.303 * diffs.std(ddof=1) / np.sqrt(3),
                               rel=1e-3)
  # -0.005 +- 0.0129: the interval holds 0, so no verdict.
  assert train_seeds.verdict(d) == 'not resolved'
  clear = train_seeds.paired(
      a, train_seeds.merge([_row('cd', s, v + 0.01) for s, v in
                            enumerate((0.002, 0.008, 0.005))])[0],
      'energy_distance')
  assert clear['half_width'] == pytest.approx(0.0, abs=1e-12)
  assert train_seeds.verdict(clear) == 'first better'
  # A reference without copies enters as a constant.
  teacher = {'model': 'teacher', 'sampler': 'ancestral', 'steps': 8,
             'metrics': {'energy_distance': 0.013}}
  d = train_seeds.paired(a, teacher, 'energy_distance')
  assert d['mean'] == pytest.approx(0.005 - 0.013)
  assert train_seeds.verdict(d) == 'first better'


def test_across_seeds_counts_each_copy_of_a_merged_row():
  merged = train_seeds.merge([_row('mm', s, v, 1e-4) for s, v in
                              enumerate((0.002, 0.008))])
  rows = across_seeds.combine([{'rows': merged},
                               {'rows': [_row('mm', 0, 0.005, 1e-4)]}])
  assert rows[0]['num_train_seeds'] == 3
  assert rows[0]['metrics']['energy_distance'] == pytest.approx(0.005)


def test_a_run_with_training_seeds(tmp_path):
  """A one-copy run, then the same workdir with train_seeds=2: the finished
  copy 0 is kept as it is (its stage.json predates train_seeds), copy 1
  trains from its own key and data order, and the report merges them."""
  w = tmp_path / 'w'
  over = {'stages': ('teacher', 'mm_alternating', 'evaluate'),
          'eval.num_seeds': 2}
  tiny.run('toy2d', 'tiny_mm', w, over)
  one = json.load(open(w / 'report.json'))
  row0 = next(r for r in one['rows'] if r['sampler'] == 'student')
  ckpt = w / 'mm_alternating_k2' / 'stage.json'
  before = ckpt.read_text()
  tiny.run('toy2d', 'tiny_mm', w, {**over, 'train_seeds': 2})
  assert ckpt.read_text() == before   # not retrained
  meta = json.load(open(w / 'mm_alternating_k2_seed1' / 'stage.json'))
  assert meta['train_seed'] == 1
  rep = json.load(open(w / 'report.json'))
  students = [r for r in rep['rows'] if r['sampler'] == 'student']
  assert len(students) == 1
  st = students[0]
  assert st['num_train_seeds'] == 2 and st['num_seeds'] == 2
  copy0, copy1 = st['train_seeds']
  assert copy0['metrics'] == row0['metrics']
  assert copy1['metrics']['energy_distance'] != copy0['metrics'][
      'energy_distance']
  ed = [copy0['metrics']['energy_distance'],
        copy1['metrics']['energy_distance']]
  assert st['metrics']['energy_distance'] == pytest.approx(np.mean(ed))
  assert st['metrics_std']['energy_distance'] == pytest.approx(
      np.std(ed, ddof=1))
  assert st['eval_seed_std']['energy_distance'] == pytest.approx(np.mean(
      [copy0['metrics_std']['energy_distance'],
       copy1['metrics_std']['energy_distance']]))
  md = (w / 'report.md').read_text()
  assert 'mean ± std over 2 training seeds' in md
  assert 'Paired differences' not in md   # one method: nothing to pair
  # The copy samples on its own (its directory name is not a config job).
  from mmd_jax.run.stage_dir import open_stage
  stage = open_stage(str(w / 'mm_alternating_k2_seed1'))
  assert stage.opened.job.train_seed == 1
  assert os.path.isdir(w / 'mm_alternating_k2_seed1' / 'checkpoints')


def test_report_markdown_says_which_std():
  rows = train_seeds.merge([_row('mm', s, v, 1e-4) for s, v in
                            enumerate((0.002, 0.008, 0.005))] +
                           [_row('cd', s, v, 1e-4) for s, v in
                            enumerate((0.010, 0.007, 0.013))])
  md = report.render_markdown({'dataset': 'toy2d', 'reference': {},
                               'rows': rows}, {}, 'energy_distance')
  assert 'mean ± std over 3 training seeds' in md
  assert '## Paired differences over training seeds: energy_distance' in md
  assert '| 8 | mm | cd | -0.005 |' in md
  one = [{**r, 'train_seed': None} for r in rows[:1]]
  one[0].pop('train_seeds')
  one[0].pop('num_train_seeds')
  md = report.render_markdown({'dataset': 'toy2d', 'reference': {},
                               'rows': one}, {}, 'energy_distance')
  assert 'evaluation seeds of one trained copy' in md
  assert 'Paired differences' not in md


def test_one_consistency_model_per_seed_scored_at_every_k(tmp_path):
  """Consistency distillation trains one model per training seed and
  scores it at every k: the rows of one copy differ by the sampler only."""
  w = tmp_path / 'cd'
  tiny.run('toy2d', 'tiny', w, {
      'stages': ('teacher', 'consistency', 'evaluate'), 'train_seeds': 2,
      'distill.sampling_steps': (1, 2)})
  dirs = sorted(p.name for p in w.iterdir() if p.name.startswith('consis'))
  assert dirs == ['consistency_k1', 'consistency_k1_seed1']
  rep = json.load(open(w / 'report.json'))
  rows = {r['steps']: r for r in rep['rows'] if r['sampler'] == 'student'}
  assert sorted(rows) == [1, 2]
  for r in rows.values():
    assert r['num_train_seeds'] == 2 and r['model'] == 'consistency'
    # Every k's row costs one model's training.
    assert r['cost']['train_examples'] == 6 * 64
  assert (rows[1]['train_seeds'][0]['metrics'] !=
          rows[2]['train_seeds'][0]['metrics'])


def test_compare_runs_table_pairs_each_run_with_the_first():
  from mmd_jax.evaluation import compare_runs
  teacher = {'model': 'teacher', 'sampler': 'ancestral', 'steps': 8,
             'metrics': {'energy_distance': 0.0125}}
  base = train_seeds.merge([teacher] + [
      _row('mm_alternating', s, v, 1e-4) for s, v in
      enumerate((0.002, 0.008, 0.005))])
  other = train_seeds.merge([teacher] + [
      _row('mm_alternating', s, v + 0.01, 1e-4) for s, v in
      enumerate((0.002, 0.008, 0.005))])
  text = compare_runs.table([('base', {'rows': base}),
                             ('other', {'rows': other})], 'mm_alternating',
                            8, 'energy_distance', ('teacher', 'ancestral', 8))
  lines = text.splitlines()
  assert lines[0].startswith('| run | seed 0 | seed 1 | seed 2 |')
  assert lines[2].startswith('| base | 0.002 | 0.008 | 0.005 | 0.005 ± 0.003 |')
  # worst 0.008 against the teacher's 8 steps: 0.64.
  assert '| 0.008 | 0.64 |' in lines[2]
  assert lines[3].startswith('| other | 0.012 | 0.018 | 0.015 |')
  assert lines[3].endswith('worse |')   # other minus base: +0.01 exactly
  assert lines[-1] == 'reference teacher:ancestral:8: 0.0125'


def test_compare_runs_defaults_to_the_reports_own_metric():
  from mmd_jax.evaluation import compare_runs
  digits = {'rows': [{'model': 'teacher', 'sampler': 'ancestral', 'steps': 8,
                      'metrics': {'class_accuracy': 0.99, 'fd': 14.6}}]}
  points = {'rows': [{'model': 'teacher', 'sampler': 'ancestral', 'steps': 8,
                      'metrics': {'mmd': 0.03, 'energy_distance': 0.014}}]}
  assert compare_runs.primary_metric(digits) == 'fd'
  assert compare_runs.primary_metric(points) == 'energy_distance'
  with pytest.raises(SystemExit, match='class_accuracy'):
    compare_runs.primary_metric({'rows': [{'metrics': {'class_accuracy': 1}}]})
  student = {'model': 'mm_alternating', 'sampler': 'student', 'steps': 8,
             'metrics': {'fd': 10.0}}
  with pytest.raises(SystemExit, match='energy_distance.*it has fd'):
    compare_runs.table([('board', {'rows': [student]})], 'mm_alternating', 8,
                       'energy_distance')
