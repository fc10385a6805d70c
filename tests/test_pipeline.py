"""End to end through the command lines, on tiny configs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest


def _run(args, cwd, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m'] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def toy_workdir(tmp_path_factory):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  w = tmp_path_factory.mktemp('toy') / 'w'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny', f'--workdir={w}'],
           root)
  assert r.returncode == 0, r.stderr[-3000:]
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


def test_rerun_skips_finished_stages(toy_workdir, repo_root):
  before = os.path.getmtime(toy_workdir / 'teacher' / 'stage.json')
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny',
            f'--workdir={toy_workdir}', '--config.stages=("teacher",)'],
           repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'finished earlier, skipping' in r.stderr
  assert os.path.getmtime(toy_workdir / 'teacher' / 'stage.json') == before


def test_sample_cli_is_bit_reproducible(toy_workdir, repo_root, tmp_path):
  outs = []
  for name, seed in (('a', 3), ('b', 3), ('c', 4)):
    out = tmp_path / f'{name}.npz'
    r = _run(['mmd_jax.sample', f'--workdir={toy_workdir}/teacher',
              '--steps=8', '--num_samples=300', f'--seed={seed}',
              f'--output={out}'], repo_root)
    assert r.returncode == 0, r.stderr[-2000:]
    outs.append(np.load(out)['samples'])
  assert outs[0].shape == (300, 2) and outs[0].dtype == np.float32
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])


def test_digits_pipeline_and_conditional_samples(repo_root, tmp_path):
  w = tmp_path / 'd'
  r = _run(['mmd_jax.main', '--config=configs/digits.py:tiny',
            f'--workdir={w}'], repo_root)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(w / 'report.json'))
  assert rep['dataset'] == 'digits'
  assert 0.0 <= rep['classifier']['test_accuracy'] <= 1.0
  for m in ('fd', 'class_accuracy', 'precision', 'recall'):
    assert m in rep['rows'][0]['metrics'] and m in rep['reference']
  out = tmp_path / 's.npz'
  r = _run(['mmd_jax.sample', f'--workdir={w}/teacher', '--steps=2',
            '--num_samples=20', '--seed=0', f'--output={out}'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  f = np.load(out)
  assert f['samples'].shape == (20, 8, 8, 1)
  np.testing.assert_array_equal(f['labels'], np.arange(20) % 10)

  # --mode=eval re-scores the finished workdir without training: the same
  # numbers as the training run's own evaluation.
  os.rename(w / 'report.json', w / 'report_train.json')
  r = _run(['mmd_jax.main', '--config=configs/digits.py:tiny',
            f'--workdir={w}', '--mode=eval'], repo_root)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'teacher: finished' not in r.stderr and 'step 10/20' not in r.stderr
  again = json.load(open(w / 'report.json'))
  trained = json.load(open(w / 'report_train.json'))
  assert again['reference'] == trained['reference']
  assert [x['metrics'] for x in again['rows']] == [
      x['metrics'] for x in trained['rows']]
  # An older checkpoint scores differently; a missing one fails in one line.
  r = _run(['mmd_jax.main', '--config=configs/digits.py:tiny',
            f'--workdir={w}', '--mode=eval', '--checkpoint_step=10'], repo_root)
  assert r.returncode == 0, r.stderr[-3000:]
  older = json.load(open(w / 'report.json'))
  assert older['rows'][0]['metrics'] != trained['rows'][0]['metrics']
  r = _run(['mmd_jax.main', '--config=configs/digits.py:tiny',
            f'--workdir={w}', '--mode=eval', '--checkpoint_step=7'], repo_root)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and 'step 7' in last, r.stderr[-2000:]


@pytest.mark.parametrize('override,message', [
    ('--config.distill.sampling_steps=(0,4)', 'distill.sampling_steps'),
    ('--config.data.name=imagenet9', 'data.name'),
    ('--config.stages=("teacher","bogus")', 'stages'),
    ('--config.teacher.learning_rate=-1.0', 'teacher.learning_rate'),
    ('--config.teacher.checkpoint=/nonexistent/ckpt', 'teacher.checkpoint'),
])
def test_bad_config_fails_with_one_line_and_no_workdir(override, message,
                                                       repo_root, tmp_path):
  w = tmp_path / 'never'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny', f'--workdir={w}',
            override], repo_root, timeout=120)
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.') and message in last, r.stderr[-1000:]
  assert not w.exists()


@pytest.mark.parametrize('override,message', [
    ('--config.teacher.nonsense=3', 'nonsense'),
    ('--config.teacher.num_train_steps=abc', 'num_train_steps'),
])
def test_unknown_key_or_wrong_type_fails_in_one_line(override, message,
                                                     repo_root, tmp_path):
  w = tmp_path / 'never'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny', f'--workdir={w}',
            override], repo_root, timeout=120)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), r.stderr[-1000:]
  assert message in lines[0]
  assert not w.exists()


def test_moment_matching_stages_end_to_end(repo_root, tmp_path):
  w = tmp_path / 'mm'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny_mm',
            f'--workdir={w}', '--config.eval.every_steps=4'], repo_root)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(w / 'report.json'))
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
    assert (stage / 'frozen').is_dir()  # teacher (and Lambda) saved once
  recs = [json.loads(l) for l in open(w / 'mm_parameter_k2' / 'metrics.jsonl')]
  assert all('monitor' in r and 'loss' in r for r in recs)
  # The sample CLI uses the student's own k by default.
  out = tmp_path / 's.npz'
  r = _run(['mmd_jax.sample', f'--workdir={w}/mm_alternating_k2',
            '--num_samples=50', '--seed=1', f'--output={out}'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'k=2' in r.stdout
  assert np.load(out)['samples'].shape == (50, 2)


def test_emd_stages_end_to_end(repo_root, tmp_path):
  """diff_instruct, emd and a one-entry sweep: stage dirs, report rows with
  settings and step costs, and the sample CLI on a sweep member."""
  w = tmp_path / 'emd'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny_emd',
            f'--workdir={w}'], repo_root)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(w / 'report.json'))
  rows = {x['model']: x for x in rep['rows'] if x['sampler'] == 'student'}
  sweep = 'emd[K=2,x,cancel,ge=0.5,gz=0.1]'
  assert set(rows) == {'diff_instruct', 'emd', sweep}
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
  assert 'EMD settings' in md and sweep in md and 'train s/step' in md
  for f in ('samples_emd_k1.png', 'samples_diff_instruct_k1.png',
            'samples_emd_K=2_x_cancel_ge=0.5_gz=0.1_k1.png'):
    assert (w / f).exists() and f in md, f
  out = [tmp_path / f'{i}.npz' for i in range(2)]
  for o in out:
    r = _run(['mmd_jax.sample', f'--workdir={w}/emd_k1_K2_x_cancel_ge0.5_gz0.1',
              '--num_samples=40', '--seed=2', f'--output={o}'], repo_root)
    assert r.returncode == 0, r.stderr[-2000:]
  a, b = (np.load(o)['samples'] for o in out)
  assert a.shape == (40, 2)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('override,message', [
    ('--config.emd.sweep=("langevin_steps=2,bogus=1",)', 'emd.sweep[0]'),
    ('--config.emd.sweep=("gamma_eps=2.0",)', 'gamma_eps'),
    ('--config.emd.parameterization=xz', 'emd.parameterization'),
    ('--config.emd.t_max=1.0', 'emd.t_min'),
])
def test_bad_emd_config_fails_in_one_line(override, message, repo_root,
                                          tmp_path):
  w = tmp_path / 'never'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny_emd',
            f'--workdir={w}', override], repo_root, timeout=120)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.') and message in last, r.stderr[-1000:]
  assert not w.exists()


def test_teacher_export_import_gives_identical_samples(toy_workdir, repo_root,
                                                       tmp_path):
  params_file = tmp_path / 'teacher.npz'
  r = _run(['mmd_jax.teacher_io', f'--workdir={toy_workdir}/teacher',
            f'--output={params_file}'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  other = tmp_path / 'imported'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny',
            f'--workdir={other}', f'--config.teacher.checkpoint={params_file}',
            '--config.stages=("teacher",)'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.load(open(other / 'teacher' / 'stage.json'))[
      'imported_from'] == str(params_file)
  samples = []
  for w in (toy_workdir, other):
    out = tmp_path / f'{w.name}.npz'
    r = _run(['mmd_jax.sample', f'--workdir={w}/teacher', '--steps=4',
              '--num_samples=64', '--seed=3', f'--output={out}'], repo_root)
    assert r.returncode == 0, r.stderr[-2000:]
    samples.append(np.load(out)['samples'])
  np.testing.assert_array_equal(samples[0], samples[1])


def test_teacher_import_names_the_first_mismatch(toy_workdir, repo_root,
                                                 tmp_path):
  params_file = tmp_path / 'teacher.npz'
  r = _run(['mmd_jax.teacher_io', f'--workdir={toy_workdir}/teacher',
            f'--output={params_file}'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  other = tmp_path / 'wider'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny',
            f'--workdir={other}', f'--config.teacher.checkpoint={params_file}',
            '--config.model.width=24', '--config.stages=("teacher",)'],
           repo_root)
  assert r.returncode == 2
  err = r.stderr.strip().splitlines()[-1]
  assert err.startswith('error: teacher.checkpoint') and 'params/' in err
  assert 'shape' in err and '24' in err, err
  assert not (other / 'teacher' / 'checkpoints').exists()


def test_describe_mode_reports_params_flops_and_memory(repo_root, tmp_path):
  w = tmp_path / 'd'
  r = _run(['mmd_jax.main', '--config=configs/toy2d.py:tiny_mm',
            f'--workdir={w}', '--mode=describe'], repo_root)
  assert r.returncode == 0, r.stderr[-2000:]
  d = json.load(open(w / 'describe.json'))
  # The count of a real init of the same module.
  from configs import toy2d
  from mmd_jax import stages
  from mmd_jax.describe import data_shape
  import jax
  import jax.numpy as jnp
  c = toy2d.get_config('tiny_mm')
  spec = stages.denoiser_spec(c, data_shape(c.data))
  n = sum(x.size for x in jax.tree.leaves(
      spec.init_params(jax.random.PRNGKey(0), jnp.zeros((1, 2)))))
  assert d['networks']['teacher']['params'] == n
  assert d['networks']['student']['params'] == n
  assert d['global_batch'] == c.teacher.batch_size
  assert d['mesh'] == {'data': 1, 'fsdp': 1}
  names = set(d['stages'])
  assert names == {'teacher'} | {f'{m}_k{k}' for m in (
      'mm_alternating', 'mm_parameter') for k in c.distill.sampling_steps}
  for s in d['stages'].values():
    assert s['flops_per_step'] > 0 and s['memory_bytes'] > 0
  # A student step runs the network several times: it costs more than a
  # teacher step at the same batch size.
  per_ex = {k: v['flops_per_example'] for k, v in d['stages'].items()}
  assert per_ex['mm_alternating_k2'] > 1.5 * per_ex['teacher']
  assert not (w / 'teacher').exists()   # nothing trained
  assert 'TFLOP/step' in r.stdout


def _points_file(tmp_path, kind):
  f = tmp_path / f'{kind}.npy'
  if kind == 'text':
    np.save(f, np.array([['a', 'b'], ['c', 'd']]))
  elif kind == 'rank3':
    np.save(f, np.zeros((4, 2, 2)))
  elif kind == 'empty':
    np.save(f, np.zeros((0, 2)))
  return f


@pytest.mark.parametrize('case,extra,devices,message', [
    ('points missing', ['--config.data.name=points',
                        '--config.data.path=MISSING'], 1, 'data.path'),
    ('points text', ['--config.data.name=points', '--config.data.path=text'], 1,
     'real numeric array'),
    ('points rank', ['--config.data.name=points', '--config.data.path=rank3'],
     1, 'expected rank 2'),
    ('points empty', ['--config.data.name=points', '--config.data.path=empty'],
     1, 'is empty'),
    ('unwritable', ['--workdir=FILE/sub'], 1, 'is not writable'),
    ('mesh', ['--config.mesh.data=3', '--config.mesh.fsdp=-1'], 8,
     'does not divide the 8 devices'),
    ('batch', ['--config.teacher.batch_size=60'], 8,
     'teacher.batch_size=60 is not divisible by the 8 devices'),
    ('inception', ['--config.eval.inception_weights=/nonexistent/inc.npz'], 1,
     'eval.inception_weights'),
    ('method', ['--config.stages=("teacher","mm_magic")'], 1, 'mm_magic'),
])
def test_bad_input_is_one_line_and_writes_nothing(case, extra, devices,
                                                  message, repo_root,
                                                  tmp_path):
  w = tmp_path / 'never'
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  args = []
  for a in extra:
    if a.startswith('--config.data.path=') and a != '--config.data.path=MISSING':
      a = f'--config.data.path={_points_file(tmp_path, a.split("=")[1])}'
    if a == '--config.data.path=MISSING':
      a = f'--config.data.path={tmp_path / "missing.npy"}'
    if a == '--workdir=FILE/sub':
      w = blocker / 'sub'
      continue
    args.append(a)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  before = sorted(os.listdir(tmp_path))
  r = subprocess.run(
      [sys.executable, '-m', 'mmd_jax.main', '--config=configs/toy2d.py:tiny',
       f'--workdir={w}', *args], cwd=repo_root, env=env, capture_output=True,
      text=True, timeout=120)
  assert r.returncode != 0, case
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and message in lines[0], (case, r.stderr[-1500:])
  assert r.stderr.strip().splitlines()[-1] == lines[0]
  assert not w.exists()
  assert sorted(os.listdir(tmp_path)) == before   # nothing else written
  assert blocker.read_text() == 'not a directory'


def test_teacher_for_other_data_is_refused_in_one_line(toy_workdir, repo_root,
                                                      tmp_path):
  w = tmp_path / 'digits'
  r = _run(['mmd_jax.main', '--config=configs/digits.py:tiny_mm',
            f'--workdir={w}', f'--config.teacher.checkpoint={toy_workdir}/teacher',
            '--config.stages=("mm_alternating",)'], repo_root)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.teacher.checkpoint') and \
      'toy2d' in last and 'digits' in last, last
  assert not w.exists()


def test_teacher_param_files_roundtrip_in_both_formats(tmp_path):
  """.npz and .msgpack hold the same arrays; loading checks names and
  shapes against the module (the CLI test above covers the .npz path end
  to end)."""
  import jax
  from mmd_jax import teacher_io
  rng = np.random.default_rng(0)
  params = {'params': {'Dense_0': {'kernel': rng.normal(size=(3, 4)).astype(
      np.float32), 'bias': np.zeros(4, np.float32)},
      'Embed_0': {'embedding': rng.normal(size=(5, 4)).astype(np.float32)}}}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          params)
  for suffix in ('.npz', '.msgpack'):
    f = str(tmp_path / f'p{suffix}')
    teacher_io.save_params(f, params)
    back = teacher_io.load_params(f, abstract)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
    wrong = jax.tree.map(lambda a: a, abstract)
    wrong['params']['Dense_0']['kernel'] = jax.ShapeDtypeStruct((3, 8),
                                                                np.float32)
    with pytest.raises(teacher_io.TeacherImportError,
                       match=r'params/Dense_0/kernel has shape \(3, 4\)'):
      teacher_io.load_params(f, wrong)
    extra = {'params': dict(abstract['params'], Dense_1=abstract['params'][
        'Dense_0'])}
    with pytest.raises(teacher_io.TeacherImportError,
                       match='lacks parameter params/Dense_1'):
      teacher_io.load_params(f, extra)
