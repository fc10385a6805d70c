"""The pipeline end to end on tiny configs, in process (runner.run, the
sample and export functions the command lines call), plus the few things
only a process shows: exit codes, one-line errors on stderr, device-count
flags."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tiny
from mmd_jax.run import config_check, describe, runner
from mmd_jax.workdir import param_files
from mmd_jax import sample
from mmd_jax.workdir import teacher_io
from mmd_jax.run.checks import ConfigError
from mmd_jax.data import DataError


def _cli(args, cwd, devices=None, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if devices:
    env['XLA_FLAGS'] = tiny.xla_flags(devices)
  return subprocess.run([sys.executable, '-m'] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(r):
  """The run failed with exactly one `error:` line, and it is the last."""
  assert r.returncode == 2, tiny.why(r)
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith('error:')]
  assert len(lines) == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == lines[0]
  return lines[0]


@pytest.fixture(scope='module')
def toy_workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp('toy') / 'w'
  tiny.run('toy2d', 'tiny', w, {'log.tensorboard': True})
  return w


def test_toy_report_follows_the_schema(toy_workdir):
  rep = json.load(open(toy_workdir / 'report.json'))
  assert rep['dataset'] == 'toy2d/asymmetric_mixture'
  for m in ('energy_distance', 'mmd', 'mode_weight_error', 'mode_coverage'):
    assert m in rep['reference']
  assert [(r['model'], r['sampler'], r['steps']) for r in rep['rows']] == [
      ('teacher', 'ancestral', 1), ('teacher', 'ancestral', 4)]
  for r in rep['rows']:
    assert np.isfinite(r['metrics']['energy_distance'])
  md = open(toy_workdir / 'report.md').read()
  assert 'real vs real' in md and 'quality_vs_steps.png' in md
  for f in ('quality_vs_steps.png', 'samples_teacher_ancestral.png',
            'teacher/samples.png', 'teacher/metrics.jsonl',
            'teacher/stage.json', 'teacher/config.json'):
    assert (toy_workdir / f).exists(), f
  recs = [json.loads(l) for l in open(toy_workdir / 'teacher/metrics.jsonl')]
  assert all('step' in r and 'loss' in r for r in recs)
  assert any(n.startswith('events.out.tfevents')
             for n in os.listdir(toy_workdir / 'teacher'))


def test_rerun_skips_finished_stages(toy_workdir):
  before = os.path.getmtime(toy_workdir / 'teacher' / 'stage.json')
  ckpts = sorted(os.listdir(toy_workdir / 'teacher' / 'checkpoints'))
  tiny.run('toy2d', 'tiny', toy_workdir, {'stages': ('teacher',)})
  assert os.path.getmtime(toy_workdir / 'teacher' / 'stage.json') == before
  assert sorted(os.listdir(toy_workdir / 'teacher' / 'checkpoints')) == ckpts


def test_a_finished_stage_without_checkpoints_is_one_line(toy_workdir,
                                                          tmp_path):
  w = tmp_path / 'w'
  shutil.copytree(toy_workdir, w)
  shutil.rmtree(w / 'teacher' / 'checkpoints')
  stage_json = (w / 'teacher' / 'stage.json').read_text()
  want = (f'no checkpoint in {w / "teacher"} (its stage.json says it '
          'finished); restore its checkpoints/ from a copy, or remove')
  with pytest.raises(runner.WorkdirError) as e:
    tiny.run('toy2d', 'tiny', w)
  assert str(e.value).startswith(want), str(e.value)
  with pytest.raises(runner.WorkdirError) as e:
    sample.draw(str(w / 'teacher'), 4, 10)
  assert str(e.value).startswith(want), str(e.value)
  assert (w / 'teacher' / 'stage.json').read_text() == stage_json


def test_sample_is_bit_reproducible_and_the_cli_writes_it(
    toy_workdir, repo_root, tmp_path):
  stage = str(toy_workdir / 'teacher')
  a, _, k = sample.draw(stage, 8, 300, seed=3)
  b, _, _ = sample.draw(stage, 8, 300, seed=3)
  c, _, _ = sample.draw(stage, 8, 300, seed=4)
  assert k == 8 and a.shape == (300, 2) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  out = tmp_path / 'a.npz'
  r = _cli(['mmd_jax.sample', f'--workdir={stage}', '--steps=8',
            '--num_samples=300', '--seed=3', f'--output={out}'], repo_root)
  assert r.returncode == 0, tiny.why(r)
  # Quiet: no library notices, no orbax INFO lines; one line of its own.
  for noise in ('oneDNN', "Unable to initialize backend 'tpu'", 'orbax',
                'absl::InitializeLog'):
    assert noise not in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) <= 1, r.stderr
  np.testing.assert_array_equal(np.load(out)['samples'], a)
  r = _cli(['mmd_jax.sample', f'--workdir={tmp_path}', f'--output={out}'],
           repo_root)
  assert 'is not a stage directory' in _one_error_line(r)


@pytest.mark.parametrize('kwargs,message', [
    ({'steps': -3}, '--steps must be an integer >= 1, got -3'),
    ({'steps': 0}, '--steps must be an integer >= 1, got 0'),
    ({'num_samples': -5}, '--num_samples must be an integer >= 1, got -5'),
    ({'num_samples': 0}, '--num_samples must be an integer >= 1, got 0'),
    ({'batch_size': 0}, '--batch_size must be an integer >= 1, got 0'),
    ({'num_samples': 10**11}, '--num_samples=100000000000: 745 GiB'),
    ({'guidance': 3.0}, '--guidance=3: teacher is unconditional'),
])
def test_sample_refuses_bad_requests_in_one_line(toy_workdir, kwargs,
                                                 message):
  with pytest.raises(sample.SampleError) as e:
    sample.draw(str(toy_workdir / 'teacher'), **kwargs)
  assert str(e.value).startswith(message), str(e.value)
  assert '\n' not in str(e.value)


def test_digits_pipeline_eval_mode_and_conditional_samples(tmp_path):
  w = tmp_path / 'd'
  c = tiny.run('digits', 'tiny', w)
  rep = json.load(open(w / 'report.json'))
  assert rep['dataset'] == 'digits'
  assert 0.0 <= rep['classifier']['test_accuracy'] <= 1.0
  for m in ('fd', 'class_accuracy', 'precision', 'recall'):
    assert m in rep['rows'][0]['metrics'] and m in rep['reference']
  s, ids, _ = sample.draw(str(w / 'teacher'), 2, 20, seed=0)
  assert s.shape == (20, 8, 8, 1)
  np.testing.assert_array_equal(ids['labels'], np.arange(20) % 10)

  # --mode=eval re-scores the finished workdir without training: the same
  # numbers as the training run's own evaluation.
  mtime = os.path.getmtime(w / 'teacher' / 'stage.json')
  again = runner.evaluate_workdir(c, str(w))
  assert os.path.getmtime(w / 'teacher' / 'stage.json') == mtime
  assert again['reference'] == rep['reference']
  assert [x['metrics'] for x in again['rows']] == [
      x['metrics'] for x in rep['rows']]
  # An older checkpoint scores differently; a missing one fails in one line.
  older = runner.evaluate_workdir(c, str(w), checkpoint_step=10)
  assert older['rows'][0]['metrics'] != rep['rows'][0]['metrics']
  with pytest.raises(runner.WorkdirError, match='step 7'):
    runner.evaluate_workdir(c, str(w), checkpoint_step=7)
  with pytest.raises(runner.WorkdirError, match="no stage 'mm_alternating_k2'"):
    runner.evaluate_workdir(tiny.config('digits', 'tiny_mm'), str(w))


@pytest.mark.parametrize('name,arg,overrides,message', [
    ('toy2d', 'tiny_mm', {'distill.sampling_steps': (0, 4)},
     'config.distill.sampling_steps: every k'),
    ('toy2d', 'tiny', {'data.name': 'imagenet9'}, 'config.data.name'),
    ('toy2d', 'tiny', {'stages': ('teacher', 'bogus')},
     "config.stages: unknown stage 'bogus'"),
    ('toy2d', 'tiny', {'stages': ('mm_alternating', 'teacher')},
     "config.stages: 'mm_alternating' needs the teacher_params of 'teacher'"),
    ('toy2d', 'tiny', {'teacher.learning_rate': -1.0},
     'config.teacher.learning_rate'),
    ('toy2d', 'tiny', {'teacher.checkpoint': '/nonexistent/ckpt'},
     'config.teacher.checkpoint'),
    ('toy2d', 'tiny_emd', {'emd.sweep': ('langevin_steps=2,bogus=1',)},
     'config.emd.sweep[0]'),
    ('toy2d', 'tiny_emd', {'emd.sweep': ('gamma_eps=2.0',)},
     'config.emd.sweep[0] (gamma_eps): must be in (0, 1]'),
    ('toy2d', 'tiny_emd', {'emd.parameterization': 'xz'},
     'config.emd.parameterization'),
    ('toy2d', 'tiny_emd', {'emd.t_max': 1.0}, 'config.emd.t_min'),
    ('digits', 'tiny', {'stages': ('teacher', 'emd'), 'emd.teacher':
                        'analytic'},
     "config.emd.teacher: 'analytic' needs a toy2d mixture"),
    ('toy2d', 'tiny_emd', {'emd.sweep': ('teacher=exact',)},
     'config.emd.sweep[0] (teacher): unknown'),
    ('digits', 'tiny', {'stages': ('teacher', 'emd'),
                        'emd.sweep': ('fake_score=quadrature',)},
     "config.emd.fake_score: 'quadrature' needs 2-D unlabelled toy2d data"),
    ('toy2d', 'tiny_emd', {'emd.fake_score': 'exact'},
     'config.emd.fake_score: unknown'),
    ('toy2d', 'tiny_mm', {'grad_accum_steps': 3}, 'config.grad_accum_steps'),
    ('digits_latent', None, {'stages': ('teacher', 'vae', 'evaluate')},
     "config.stages: 'teacher' trains in the space of 'vae'"),
    # Guidance on data without labels would be silently ignored.
    ('toy2d', 'tiny', {'eval.guidance': 3.0}, 'config.eval.guidance: 3.0 asks'),
    ('toy2d', 'tiny_mm', {'distill.guidance': 2.0},
     'config.distill.guidance: 2.0 asks'),
    ('toy2d', 'tiny_emd', {'distill.guidance': 2.0},
     'config.distill.guidance: 2.0 asks'),
    # Sections no planned stage reads are still type- and range-checked.
    ('toy2d', 'tiny_emd', {'distill.sampling_steps': (0,)},
     'config.distill.sampling_steps: every k must be an integer >= 1'),
    ('toy2d', 'tiny', {'vae.latent_dim': 0}, 'config.vae.latent_dim'),
    ('toy2d', 'tiny', {'consistency.ema_decay': 1.5},
     'config.consistency.ema_decay: must be in [0, 1)'),
    ('toy2d', 'tiny', {'progressive.learning_rate': -1.0},
     'config.progressive.learning_rate'),
])
def test_bad_config_is_one_line_naming_the_key(name, arg, overrides, message,
                                               tmp_path):
  w = tmp_path / 'never'
  with pytest.raises(ConfigError) as e:
    tiny.run(name, arg, w, overrides)
  assert str(e.value).startswith(message), str(e.value)
  assert '\n' not in str(e.value)
  assert not w.exists()


def test_an_unused_section_is_not_held_to_how_its_stage_would_run():
  """Checks that depend on the run (the batch split, the data, the k a
  progressive schedule reaches) apply to planned stages only: an EMD run
  takes an odd distillation batch that mm_parameter could not split."""
  from mmd_jax.run import config_check
  cfg = tiny.config('toy2d', 'tiny_emd')
  with cfg.unlocked():
    cfg.distill.batch_size = 9
    cfg.distill.sampling_steps = (3,)
    cfg.emd.sweep = ()
  names = [p.method.name for p in config_check.validate(cfg).jobs]
  assert names == ['teacher', 'diff_instruct', 'emd']
  with cfg.unlocked():
    cfg.stages = ('teacher', 'mm_parameter')
  with pytest.raises(ConfigError, match='config.distill.batch_size: must be '
                     'even'):
    config_check.validate(cfg)


def test_moment_matching_stages_end_to_end(tmp_path):
  """Both MM algorithms and progressive rounds 8 -> 4 -> 2 on one teacher
  (consistency: the contract test), scored over 2 evaluation seeds: rows with mean, std and
  cost; the leaderboard table and picture."""
  w = tmp_path / 'mm'
  tiny.run('toy2d', 'tiny_mm', w, {
      'eval.every_steps': 4, 'eval.num_seeds': 2,
      'progressive.start_steps': 8,
      'stages': ('teacher', 'mm_alternating', 'mm_parameter', 'progressive',
                 'evaluate')})
  rep = json.load(open(w / 'report.json'))
  students = {(r['model'], r['steps']): r for r in rep['rows']
              if r['sampler'] == 'student'}
  assert set(students) == {('mm_alternating', 2), ('mm_parameter', 2),
                           ('progressive', 4), ('progressive', 2)}
  for r in rep['rows']:
    assert r['num_seeds'] == 2 and set(r['metrics_std']) == set(r['metrics'])
    assert r['metrics_std']['energy_distance'] > 0
  # Cost: examples and teacher evaluations per the jobs' sizes (6 steps of
  # 64; progressive's 6 steps split over the 3 rounds from 8 steps to one,
  # whatever k are asked for, the k=2 round including the k=4 round that
  # it starts from).
  cost = lambda m, k: students[(m, k)]['cost']
  assert cost('mm_alternating', 2)['train_examples'] == 6 * 64
  assert cost('mm_alternating', 2)['teacher_evals'] == 6 * 64
  assert cost('mm_parameter', 2)['teacher_evals'] == 2 * 6 * 64
  assert cost('progressive', 4)['train_examples'] == 2 * 64
  assert cost('progressive', 2)['train_examples'] == 4 * 64
  assert cost('progressive', 2)['teacher_evals'] == 2 * 4 * 64
  assert cost('progressive', 2)['train_seconds'] > cost(
      'progressive', 4)['train_seconds'] > 0
  assert json.load(open(w / 'progressive_k4' / 'stage.json'))[
      'setting']['teacher_steps'] == 8
  md = open(w / 'report.md').read()
  assert ('## Leaderboard: energy_distance (mean ± std over evaluation seeds '
          'of one trained copy') in md
  assert '| method | k=2 | k=4 |' in md and 'leaderboard.png' in md
  assert (w / 'leaderboard.png').exists()
  # Periodic quality during distillation: step 4 of 6 (the end is the
  # evaluate stage's job).
  q = [json.loads(l) for l in open(w / 'mm_alternating_k2' / 'quality.jsonl')]
  assert [x['step'] for x in q] == [4]
  assert np.isfinite(q[0]['eval/energy_distance'])
  rows = {(x['model'], x['sampler'], x['steps']) for x in rep['rows']}
  assert ('mm_alternating', 'student', 2) in rows
  assert ('mm_parameter', 'student', 2) in rows
  for method in ('mm_alternating', 'mm_parameter'):
    stage = w / f'{method}_k2'
    meta = json.load(open(stage / 'stage.json'))
    assert meta['k'] == 2 and meta['finished_step'] == 6
    assert meta['weighting'] == 'flat'  # k <= 2
    assert meta['setting']['s_range'] == 'full'
    assert (stage / 'frozen').is_dir()  # teacher (and Lambda) saved once
  recs = [json.loads(l) for l in open(w / 'mm_parameter_k2' / 'metrics.jsonl')]
  assert all('monitor' in r and 'loss' in r for r in recs)
  # The sampler uses the student's own k by default.
  s, _, k = sample.draw(str(w / 'mm_alternating_k2'), None, 50, seed=1)
  assert k == 2 and s.shape == (50, 2)
  # A directory holds one setting: a changed one is refused in one line.
  with pytest.raises(ConfigError, match='renoise'):
    tiny.run('toy2d', 'tiny_mm', w, {'distill.renoise': 'marginal'})


def test_emd_stages_end_to_end(tmp_path):
  """diff_instruct, emd and a one-entry sweep: stage dirs, report rows with
  settings and step costs, and sampling a sweep member. No teacher rows
  (eval.teacher_steps=()): the generators alone are scored."""
  w = tmp_path / 'emd'
  from configs import toy2d
  entries = toy2d.get_config('tiny_emd').emd.sweep + ('fake_score=quadrature',)
  tiny.run('toy2d', 'tiny_emd', w, {'eval.teacher_steps': (),
                                    'emd.sweep': entries})
  rep = json.load(open(w / 'report.json'))
  assert {x['sampler'] for x in rep['rows']} == {'student'}
  assert (w / 'teacher' / 'samples.png').exists()
  rows = {x['model']: x for x in rep['rows'] if x['sampler'] == 'student'}
  # The exact fake score (quadrature.py) trains as a sweep member.
  quad = rows.pop('emd[K=16,eps,cancel,ge=0.3,gz=0.01,fake_score=quadrature]')
  assert np.isfinite(quad['metrics']['energy_distance'])
  sweep = 'emd[K=2,x,cancel,ge=0.5,gz=0.1]'
  assert set(rows) == {'diff_instruct', 'emd', sweep}, set(rows)
  assert rows['diff_instruct']['setting'] == {
      'langevin_steps': 1, 'parameterization': 'eps',
      'noise_cancellation': 'eps', 'gamma_eps': 1.0, 'gamma_z': 0.0}
  from configs import default
  assert rows['emd']['setting']['langevin_steps'] == (
      default.get_base_config().emd.langevin_steps)
  assert rows[sweep]['setting']['parameterization'] == 'x'
  for row in rows.values():
    assert row['steps'] == 1 and row['train_seconds_per_step'] > 0
    assert np.isfinite(row['metrics']['energy_distance'])
  for d in ('diff_instruct_k1', 'emd_k1', 'emd_k1_K2_x_cancel_ge0.5_gz0.1'):
    assert json.load(open(w / d / 'stage.json'))['finished_step'] == 6
    assert (w / d / 'frozen').is_dir()
  md = open(w / 'report.md').read()
  assert '## Settings: diff_instruct, emd' in md and sweep in md
  assert '| model | langevin_steps | parameterization |' in md
  assert 'train s/step' in md
  for f in ('samples_emd_k1.png', 'samples_diff_instruct_k1.png',
            'samples_emd_K=2_x_cancel_ge=0.5_gz=0.1_k1.png'):
    assert (w / f).exists() and f in md, f
  member = str(w / 'emd_k1_K2_x_cancel_ge0.5_gz0.1')
  a, _, k = sample.draw(member, None, 40, seed=2)
  b, _, _ = sample.draw(member, 1, 40, seed=2)
  assert k == 1 and a.shape == (40, 2)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(sample.SampleError, match='--steps must be 1'):
    sample.draw(member, 4, 40)
  from mmd_jax.science import fake_score_check
  rows = fake_score_check.check(member, [0.0], points=20, grid=40)
  assert len(rows) == 6 and all(np.isfinite(r['error']) for r in rows)
  with pytest.raises(SystemExit, match='not a one-step generator'):
    fake_score_check.check(str(w / 'teacher'), [0.0])


def test_teacher_export_import_gives_identical_samples(toy_workdir, tmp_path):
  params_file = tmp_path / 'teacher.npz'
  assert teacher_io.export(str(toy_workdir / 'teacher'), str(params_file)) > 0
  other = tmp_path / 'imported'
  tiny.run('toy2d', 'tiny', other, {'teacher.checkpoint': str(params_file),
                                    'stages': ('teacher',)})
  assert json.load(open(other / 'teacher' / 'stage.json'))[
      'imported_from'] == str(params_file)
  a, _, _ = sample.draw(str(toy_workdir / 'teacher'), 4, 64, seed=3)
  b, _, _ = sample.draw(str(other / 'teacher'), 4, 64, seed=3)
  np.testing.assert_array_equal(a, b)
  # Imported once: a second run reads it; another file is refused.
  tiny.run('toy2d', 'tiny', other, {'teacher.checkpoint': str(params_file),
                                    'stages': ('teacher',)})
  second = tmp_path / 'second.npz'
  shutil.copy(params_file, second)
  with pytest.raises(ConfigError, match='already holds a teacher'):
    tiny.run('toy2d', 'tiny', other, {'teacher.checkpoint': str(second),
                                      'stages': ('teacher',)})


def test_teacher_import_names_the_first_mismatch(toy_workdir, tmp_path):
  params_file = tmp_path / 'teacher.npz'
  teacher_io.export(str(toy_workdir / 'teacher'), str(params_file))
  other = tmp_path / 'wider'
  with pytest.raises(param_files.TeacherImportError) as e:
    tiny.run('toy2d', 'tiny', other, {'teacher.checkpoint': str(params_file),
                                      'model.width': 24,
                                      'stages': ('teacher',)})
  err = str(e.value)
  assert err.startswith('teacher.checkpoint') and 'params/' in err
  assert 'shape' in err and '24' in err, err
  assert not (other / 'teacher' / 'checkpoints').exists()


def test_teacher_for_other_data_is_refused_in_one_line(toy_workdir, tmp_path):
  w = tmp_path / 'digits'
  with pytest.raises(ConfigError) as e:
    tiny.run('digits', 'tiny_mm', w,
             {'teacher.checkpoint': str(toy_workdir / 'teacher'),
              'stages': ('mm_alternating',)})
  err = str(e.value)
  assert err.startswith('config.teacher.checkpoint') and 'toy2d' in err \
      and 'digits' in err, err
  assert not w.exists()


def test_describe_reports_params_flops_and_memory(tmp_path):
  w = tmp_path / 'd'
  c = tiny.config('toy2d', 'tiny_mm')
  c.describe.target = 'h100x8'
  d = describe.describe(c, str(w))
  # The count of a real init of the same module.
  import jax
  import jax.numpy as jnp
  from mmd_jax.data import data_shape
  from mmd_jax.numerics.denoiser import spec_from_config
  spec = spec_from_config(c, data_shape(c.data))
  n = sum(x.size for x in jax.tree.leaves(
      spec.init_params(jax.random.PRNGKey(0), jnp.zeros((1, 2)))))
  assert d['networks']['teacher']['params'] == n
  assert d['networks']['student']['params'] == n
  assert d['global_batch'] == c.teacher.batch_size
  assert d['mesh'] == {'data': 1, 'fsdp': 1}
  assert set(d['stages']) == {'teacher'} | {f'{m}_k{k}' for m in (
      'mm_alternating', 'mm_parameter') for k in c.distill.sampling_steps}
  for s in d['stages'].values():
    assert s['flops_per_step'] > 0 and s['memory_bytes'] > 0
  # A student step runs the network several times: it costs more than a
  # teacher step at the same batch size.
  per_ex = {k: v['flops_per_example'] for k, v in d['stages'].items()}
  assert per_ex['mm_alternating_k2'] > 1.5 * per_ex['teacher']
  # One forward of the denoiser: a training step is forward and backward.
  fwd = d['teacher_forward']
  assert 0.15 * per_ex['teacher'] < fwd['flops_per_example'] < \
      0.7 * per_ex['teacher'], (fwd, per_ex)
  assert fwd['targets']['h100x8']['flops_bound_s'] > 0
  assert 'teacher forward' in describe.format_summary(d)
  assert json.load(open(w / 'describe.json'))['stages'].keys() == \
      d['stages'].keys()
  assert not (w / 'teacher').exists()   # nothing trained
  assert 'TFLOP/step' in describe.format_summary(d)
  # The paper estimate: FLOPs with the scans unrolled (micro-batch and
  # Langevin loops count every trip), counted before XLA's optimisation:
  # within a few % of the compiled count where there is no loop.
  for s in d['stages'].values():
    t = s['targets']['h100x8']
    assert t['target'] == 'h100x8' and t['dominant'] in ('compute',
                                                        'communication')
    assert t['flops_bound_s'] * 8 * 989e12 >= s['flops_per_step'] * 0.9
    assert t['memory_per_chip_bytes'] > 0 and t['fits']
  assert 'on h100x8' in describe.format_summary(d)
  # A bfloat16 frozen teacher halves the teacher copy in a student's state.
  c.teacher.frozen_dtype = 'bfloat16'
  c.stages = ('mm_alternating',)
  c.teacher.checkpoint = ''
  bf = describe.describe(c, str(tmp_path / 'bf'))
  mem = lambda r: r['stages']['mm_alternating_k2']['targets']['h100x8'][
      'memory_per_chip_bytes']
  saved = mem(d) - mem(bf)
  # State and gathered copy: 2 bytes per teacher parameter each (the
  # compiled temporaries differ a little between the two programs).
  want = 4 * d['networks']['teacher']['params']
  assert abs(saved - want) < 0.05 * want, (saved, want)


def _points_file(tmp_path, kind):
  f = tmp_path / f'{kind}.npy'
  if kind == 'text':
    np.save(f, np.array([['a', 'b'], ['c', 'd']]))
  elif kind == 'rank3':
    np.save(f, np.zeros((4, 2, 2)))
  elif kind == 'empty':
    np.save(f, np.zeros((0, 2)))
  elif kind == 'one_row':
    np.save(f, np.zeros((1, 2)))
  return f


@pytest.mark.parametrize('kind,error,message', [
    ('missing', ConfigError, 'data.path'),
    ('text', DataError, 'real numeric array'),
    ('rank3', DataError, 'expected rank 2'),
    ('empty', DataError, 'is empty'),
    ('one_row', DataError, r'has 1 row\(s\); at least 4 are needed'),
])
def test_bad_points_file_is_refused_before_anything_is_written(
    kind, error, message, tmp_path):
  w = tmp_path / 'never'
  path = tmp_path / 'missing.npy' if kind == 'missing' else _points_file(
      tmp_path, kind)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(error, match=message):
    tiny.run('toy2d', 'tiny', w, {'data.name': 'points',
                                  'data.path': str(path)})
  assert sorted(os.listdir(tmp_path)) == before


def test_unwritable_workdir_and_missing_teacher_are_one_line(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(runner.WorkdirError, match='is not writable'):
    tiny.run('toy2d', 'tiny', blocker / 'sub')
  assert blocker.read_text() == 'not a directory'
  w = tmp_path / 'no_teacher'
  with pytest.raises(runner.WorkdirError, match="add 'teacher' to config"):
    tiny.run('toy2d', 'tiny_mm', w, {'stages': ('mm_alternating',)})
  assert not w.exists()


@pytest.mark.parametrize('args,devices,message', [
    (['--config.teacher.nonsense=3'], 1, 'nonsense'),
    (['--config.teacher.num_train_steps=abc'], 1, 'num_train_steps'),
    (['--config.stages=("teacher","mm_magic")'], 1, 'mm_magic'),
    (['--config.mesh.data=3', '--config.mesh.fsdp=-1'], 8,
     'does not divide the 8 devices'),
    (['--config.teacher.batch_size=60'], 8,
     'teacher.batch_size=60 is not divisible by the 8 devices'),
])
def test_the_cli_exits_2_with_one_error_line_and_writes_nothing(
    args, devices, message, repo_root, tmp_path):
  w = tmp_path / 'never'
  r = _cli(['mmd_jax.main', '--config=configs/toy2d.py:tiny', f'--workdir={w}',
            *args], repo_root, devices)
  assert message in _one_error_line(r)
  assert not w.exists()


@pytest.mark.parametrize('args,message', [
    (['--config=configs/nope.py'],
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (['--config=configs/toy2d.py', '--config.trian.steps=3',
      '--config.seed=1'],
     "error: --config.trian.steps=3: the config has no key 'trian'"),
    (['--config=configs/toy2d.py', '--config.seed=1',
      '--config.teacher.num_train_stepz=3'],
     "error: --config.teacher.num_train_stepz=3: the config has no key "
     "'num_train_stepz'"),
    (['--config=configs/toy2d.py', '--config.teacher.num_train_steps=abc'],
     'error: flag --config.teacher.num_train_steps=abc: invalid literal'),
])
def test_config_flag_errors_are_one_line(args, message, repo_root, capsys,
                                         monkeypatch):
  from absl import flags
  from ml_collections import config_flags
  from mmd_jax.run import cli
  monkeypatch.chdir(repo_root)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'c', flag_values=fv,
                                  lock_config=True, sys_argv=['main'] + args)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(['main'] + args, fv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(message) and '\n' not in err and '\\n' not in err, err


def test_other_data_on_a_finished_workdir_is_refused_before_writing(
    tmp_path):
  """A points file with 3 columns where the teacher trained on 2: one line,
  and neither W/config.json nor W/teacher/config.json is rewritten."""
  rng = np.random.default_rng(0)
  f = tmp_path / 'p.npy'
  np.save(f, rng.standard_normal((256, 2)).astype(np.float32))
  w = tmp_path / 'w'
  over = {'data.name': 'points', 'data.path': str(f), 'stages': ('teacher',)}
  tiny.run('toy2d', 'tiny', w, over)
  configs = {p: (w / p).read_text() for p in ('config.json',
                                              'teacher/config.json')}
  np.save(f, rng.standard_normal((256, 3)).astype(np.float32))
  with pytest.raises(ConfigError) as e:
    tiny.run('toy2d', 'tiny', w, dict(over, **{'teacher.num_train_steps': 60}))
  assert str(e.value).startswith(
      f'{w / "teacher"} was trained with example_shape=[2]'), str(e.value)
  assert {p: (w / p).read_text() for p in configs} == configs
