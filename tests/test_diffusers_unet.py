"""The Flax port of diffusers' UNet2DModel against diffusers itself: the
fixtures (tests/fixtures/make_diffusers_fixtures.py, run by hand with torch)
hold random tiny models of every supported block type and diffusers'
outputs on fixed inputs. No torch here."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from mmd_jax.models import diffusers_unet as du

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures', 'diffusers')
NAMES = sorted(os.listdir(FIXTURES))


def test_fixtures_cover_every_block_type_and_option():
  seen = set()
  for name in NAMES:
    cfg = json.load(open(os.path.join(FIXTURES, name, 'config.json')))
    seen |= set(cfg['down_block_types']) | set(cfg['up_block_types'])
    seen.add(('shift', cfg['resnet_time_scale_shift']))
    seen.add(('class', cfg['class_embed_type'], bool(cfg['num_class_embeds'])))
  assert set(du.DOWN_BLOCKS) | set(du.UP_BLOCKS) <= seen
  assert {('shift', 'default'), ('shift', 'scale_shift')} <= seen
  assert {('class', None, False), ('class', None, True),
          ('class', 'timestep', False)} <= seen


@pytest.mark.parametrize('name', NAMES)
def test_port_matches_diffusers(name):
  module, params = du.from_pretrained(os.path.join(FIXTURES, name))
  ref = np.load(os.path.join(FIXTURES, name, 'reference.npz'))
  labels = ref['class_labels'] if 'class_labels' in ref else None
  out = jax.jit(module.apply)(params, ref['sample'], ref['timestep'], labels)
  want = ref['output']
  assert out.shape == want.shape
  # 1e-4 relative to the output's scale.
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4,
                             atol=1e-4 * float(np.abs(want).max()))


def _copy(tmp_path, name='ddpm_blocks'):
  d = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), d)
  return d


def test_wrong_inputs_fail_in_one_line_naming_the_problem(tmp_path):
  d = _copy(tmp_path)
  cfg = json.load(open(d / 'config.json'))
  for change, needle in [
      ({'down_block_types': ['CrossAttnDownBlock2D', 'AttnDownBlock2D']},
       "unsupported block type 'CrossAttnDownBlock2D'"),
      ({'up_block_types': ['AttnUpBlock2D', 'KUpBlock2D']}, "'KUpBlock2D'"),
      ({'cross_attention_dim': 8}, "unknown UNet2DModel config key "
       "'cross_attention_dim'"),
      ({'block_out_channels': [8, 32]}, 'has shape'),
      ({'class_embed_type': 'identity'}, 'class_embed_type'),
  ]:
    json.dump(dict(cfg, **change), open(d / 'config.json', 'w'))
    with pytest.raises(du.DiffusersImportError) as e:
      du.from_pretrained(str(d))
    msg = str(e.value)
    assert needle in msg and '\n' not in msg, msg
  json.dump(cfg, open(d / 'config.json', 'w'))
  os.remove(d / du.WEIGHTS_FILE)
  with pytest.raises(du.DiffusersImportError, match='has no diffusion_'
                     'pytorch_model.safetensors'):
    du.from_pretrained(str(d))
  with pytest.raises(du.DiffusersImportError, match='has no config.json'):
    du.from_pretrained(str(tmp_path))


def test_ddpm_teacher_read_at_its_own_log_snr_is_the_network():
  """At the log-SNR of step n the denoiser feeds the network step n: its
  eps output is diffusers' output at that timestep, and x follows from
  z = sqrt(abar) x + sqrt(1 - abar) eps."""
  from mmd_jax.models import diffusers_import
  d = os.path.join(FIXTURES, 'ddpm_blocks')
  module, param, conditional, sched = diffusers_import.network(
      d, 'auto', 'auto', 0.5)
  assert param == 'eps' and not conditional and sched.name == 'ddpm'
  params = diffusers_import.load_params(d)
  ref = np.load(os.path.join(d, 'reference.npz'))
  table = sched.logsnr_table()
  lam = table[ref['timestep']].astype(np.float32)
  out = jax.jit(module.apply)(params, ref['sample'], lam)
  np.testing.assert_allclose(out, ref['output'], rtol=1e-4, atol=2e-4)
  # The schedule runs from step 0 at t = 0 to step T-1 at t = 1.
  np.testing.assert_allclose([sched(0.0), sched(1.0)], table[[0, -1]],
                             rtol=1e-6)
  # Between steps the network gets a fractional step: halfway in log-SNR
  # between steps 317 and 318 it is fed 317.5.
  mid = np.float32(0.5 * (table[317] + table[318]))
  probe = module.bind(params)
  half = probe.net(ref['sample'][:1], np.float32(317.5))
  np.testing.assert_allclose(probe(ref['sample'][:1], np.full(1, mid)), half,
                             rtol=1e-4, atol=1e-5)


def test_edm_preconditioning_in_closed_form():
  from mmd_jax.models import imported
  d = os.path.join(FIXTURES, 'resnet_scale_shift_classes')
  unet_module, unet_params = du.from_pretrained(d)
  edm = imported.EDMDenoiser(unet_module, sigma_data=0.5, conditional=True)
  params = {'params': {'net': unet_params['params']}}
  ref = np.load(os.path.join(d, 'reference.npz'))
  z, labels = ref['sample'], ref['class_labels']
  lam = np.array([-4.0, 0.0, 6.0], np.float32)
  out = edm.apply(params, z, lam, labels)
  sigma = np.exp(-lam / 2).reshape(-1, 1, 1, 1)
  alpha = np.sqrt(1 / (1 + sigma ** 2))
  x = z / alpha
  c_in = 1 / np.sqrt(sigma ** 2 + 0.25)
  f = unet_module.apply(unet_params, x * c_in,
                        0.25 * np.log(sigma.reshape(-1)), labels)
  want = 0.25 / (sigma ** 2 + 0.25) * x + sigma * 0.5 / np.sqrt(
      sigma ** 2 + 0.25) * np.asarray(f)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_a_diffusers_teacher_is_imported_distilled_and_sampled(tmp_path):
  """teacher.checkpoint=<diffusers dir>: W/teacher holds the imported
  weights (and a copy of the model's config), the students are copies of
  the imported network, and everything samples."""
  import tiny
  from mmd_jax import sample
  # Imported from a copy that is gone before sampling: the workdir reads
  # its teacher without the source directory.
  d = tmp_path / 'src'
  shutil.copytree(os.path.join(FIXTURES, 'ddpm_blocks'), d)
  w = tmp_path / 'w'
  tiny.run('digits', 'tiny_mm', w, {'teacher.checkpoint': str(d),
                                    'stages': ('teacher', 'mm_alternating',
                                               'evaluate')})
  meta = json.load(open(w / 'teacher' / 'stage.json'))
  assert meta['imported_from'] == str(d)
  assert json.load(open(w / 'teacher' / 'diffusers' / 'import.json'))[
      'schedule'] == 'ddpm'
  rep = json.load(open(w / 'report.json'))
  assert {(r['model'], r['steps']) for r in rep['rows']} >= {
      ('teacher', 2), ('mm_alternating', 2)}
  for r in rep['rows']:
    assert np.isfinite(r['metrics']['fd'])
  shutil.rmtree(d)
  s, labels, k = sample.draw(str(w / 'teacher'), 4, 8)
  assert s.shape == (8, 8, 8, 1) and labels == {} and k == 4
  assert np.all(np.isfinite(s))
  s, _, _ = sample.draw(str(w / 'mm_alternating_k2'), None, 8)
  assert np.all(np.isfinite(s))


def test_a_diffusers_teacher_that_does_not_fit_the_data_is_refused(tmp_path):
  import tiny
  from mmd_jax.run.checks import ConfigError
  d = os.path.join(FIXTURES, 'resnet_scale_shift_classes')   # 3 channels
  with pytest.raises(ConfigError, match='config.teacher.checkpoint: the '
                     'model takes'):
    tiny.run('digits', 'tiny', tmp_path / 'w', {'teacher.checkpoint': d})
  assert not (tmp_path / 'w').exists()
  bad = _copy(tmp_path)
  os.remove(bad / du.WEIGHTS_FILE)
  with pytest.raises(ConfigError, match='has no diffusion_pytorch_model'):
    tiny.run('digits', 'tiny', tmp_path / 'w', {'teacher.checkpoint':
                                                str(bad)})


@pytest.mark.parametrize('name', ['config.json', 'scheduler_config.json'])
def test_a_damaged_diffusers_json_file_is_named_in_one_line(tmp_path, name):
  import tiny
  from mmd_jax.run.checks import ConfigError
  bad = _copy(tmp_path)
  (bad / name).write_text('{"_class_name": "UNet2DModel",')   # cut short
  with pytest.raises(ConfigError) as e:
    tiny.run('digits', 'tiny', tmp_path / 'w', {'teacher.checkpoint':
                                                str(bad)})
  assert str(e.value).startswith(
      f'config.teacher.checkpoint: {bad / name} is not valid JSON'), str(
          e.value)
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'w').exists()


def test_schedule_and_prediction_come_from_the_scheduler_config(tmp_path):
  """Read beside the model or in a pipeline's ../scheduler/; the oldest
  configs name the step count 'timesteps'; an EDM scheduler makes the
  teacher an EDM denoiser with its own sigma_data and noise input."""
  from mmd_jax.models import diffusers_import as di
  from mmd_jax.models import imported
  pipe = tmp_path / 'pipe'
  unet = _copy(pipe, 'ddpm_blocks')
  assert di.settings(str(unet)) == {
      'schedule': 'ddpm', 'prediction_type': 'epsilon',
      'beta_schedule': 'linear', 'beta_start': 1e-4, 'beta_end': 0.02,
      'num_train_timesteps': 1000}
  (pipe / 'scheduler').mkdir()
  json.dump({'_class_name': 'GaussianDDPMScheduler', 'beta_end': 0.012,
             'beta_schedule': 'scaled_linear', 'beta_start': 0.00085,
             'timesteps': 500, 'prediction_type': 'v_prediction'},
            open(pipe / 'scheduler' / 'scheduler_config.json', 'w'))
  s = di.settings(str(unet))
  assert (s['beta_schedule'], s['num_train_timesteps'],
          s['prediction_type']) == ('scaled_linear', 500, 'v_prediction')
  module, param, _, sched = di.network(str(unet), 'auto', 'auto', 0.5)
  assert param == 'v' and sched.num_timesteps == 500
  assert di.settings(str(unet), prediction_type='epsilon')[
      'prediction_type'] == 'epsilon'
  json.dump({'_class_name': 'KarrasEDMScheduler', 'precondition_type':
             'cm_edm', 'prediction_type': 'sample', 'sigma_data': 0.25,
             'sigma_max': 80.0, 'sigma_min': 0.002},
            open(pipe / 'scheduler' / 'scheduler_config.json', 'w'))
  module, param, _, sched = di.network(str(unet), 'auto', 'auto', 0.5)
  assert isinstance(module, imported.EDMDenoiser) and param == 'x'
  assert sched is None and module.sigma_data == 0.25
  assert module.noise_scale == 250.0
  json.dump({'_class_name': 'KarrasEDMScheduler', 'precondition_type':
             'mystery', 'sigma_max': 80.0},
            open(pipe / 'scheduler' / 'scheduler_config.json', 'w'))
  from mmd_jax.run.checks import ConfigError
  from mmd_jax.data import DataShape
  with pytest.raises(ConfigError, match="precondition_type 'mystery'"):
    di.check(str(unet), 'auto', 'auto', DataShape('d', 'digits', (8, 8, 1),
                                                  10))


def test_guidance_is_refused_for_a_teacher_without_a_null_label():
  """Label index num_classes is our unconditional input. A diffusers model
  that embeds exactly the data's classes has no such row (JAX would read
  out of range), and a 'timestep' class embedding never trained one."""
  import types
  import jax.numpy as jnp
  from mmd_jax.numerics import denoiser
  from mmd_jax.models import diffusers_import as di
  from mmd_jax.run.checks import ConfigError
  from mmd_jax.plugins import base
  import tiny
  cls = os.path.join(FIXTURES, 'resnet_scale_shift_classes')  # 10 embeds
  assert not di.has_null_label(cls, 10)
  assert di.has_null_label(cls, 9)
  assert not di.has_null_label(os.path.join(FIXTURES, 'attn_resnet_resampling'),
                               10)
  module, param, conditional, sched = di.network(cls, 'auto', 'auto', 0.5)
  net = base.Network(module, param, conditional, sched,
                     null_label=di.has_null_label(cls, 10))
  spec = denoiser.spec_from_config(tiny.config('digits', 'tiny'),
                                   types.SimpleNamespace(num_classes=10), net)
  assert spec.num_classes == 10 and not spec.has_null_label
  params = di.load_params(cls)
  z, lam, labels = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)), jnp.arange(2)
  assert np.all(np.isfinite(spec.denoiser(params, labels, 0.0)(z, lam)))
  with pytest.raises(ConfigError, match='no null label') as e:
    spec.denoiser(params, labels, 1.5)
  assert '\n' not in str(e.value)
  # Our own networks keep their null label.
  own = denoiser.spec_from_config(tiny.config('digits', 'tiny'),
                                  types.SimpleNamespace(num_classes=10))
  assert own.has_null_label


def test_a_run_refuses_eval_guidance_without_a_null_label_before_training(
    tmp_path):
  import tiny
  from mmd_jax.run.checks import ConfigError
  unet = os.path.join(os.path.dirname(FIXTURES), '..', '..', 'tools',
                      'diffusers_digits_teacher', 'unet')  # 10 classes
  with pytest.raises(ConfigError, match='config.eval.guidance: this teacher '
                     'has no null label'):
    tiny.run('digits', 'tiny_mm', tmp_path / 'w',
             {'teacher.checkpoint': unet, 'eval.guidance': 1.0})
  assert not (tmp_path / 'w' / 'teacher').exists()


@pytest.mark.parametrize('damage,message', [
    ('nan', r'has 1 non-finite value\(s\)'),
    ('int8', 'has dtype int8; a teacher must be real floating point'),
])
def test_damaged_or_quantised_weights_are_refused_naming_the_tensor(
    tmp_path, damage, message):
  from safetensors.numpy import load_file, save_file
  d = _copy(tmp_path)
  path = str(d / du.WEIGHTS_FILE)
  state = load_file(path)
  name = sorted(state)[0]
  if damage == 'nan':
    state[name] = state[name].copy()
    state[name].reshape(-1)[0] = np.nan
  else:
    state[name] = (state[name] * 100).astype(np.int8)
  save_file(state, path)
  with pytest.raises(du.DiffusersImportError) as e:
    du.from_pretrained(str(d))
  assert str(e.value).startswith(f'{path}: tensor {name} '), str(e.value)
  assert re.search(message, str(e.value)) and '\n' not in str(e.value)


def test_a_complex_parameter_file_is_refused_naming_the_tensor(tmp_path):
  from mmd_jax.workdir import param_files
  f = tmp_path / 'teacher.npz'
  np.savez(f, **{'params/Dense_0/kernel': np.ones((2, 2), np.complex64)})
  with pytest.raises(param_files.TeacherImportError,
                     match='tensor params/Dense_0/kernel has dtype complex64'):
    param_files.load_params(str(f), {})
