"""The Flax port of diffusers' UNet2DConditionModel (the Stable Diffusion
UNet) against diffusers itself: tests/fixtures/diffusers_cond holds tiny
random models written by tests/fixtures/make_diffusers_fixtures.py (run by
hand with torch) and diffusers' outputs on fixed inputs, with and without
caption masks. No torch here."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mmd_jax.models import diffusers_unet as du

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures', 'diffusers_cond')
NAMES = sorted(os.listdir(FIXTURES))
VAE_FIXTURES = os.path.join(os.path.dirname(FIXTURES), 'diffusers_vae')


def _cfg(name):
  return json.load(open(os.path.join(FIXTURES, name, 'config.json')))


def test_fixtures_cover_the_sd_unets_options():
  cfgs = [_cfg(n) for n in NAMES]
  assert {c['use_linear_projection'] for c in cfgs} == {True, False}
  assert any(isinstance(c['attention_head_dim'], list) and
             len(set(c['attention_head_dim'])) > 1 for c in cfgs)
  assert any(2 in np.ravel(c['transformer_layers_per_block']) for c in cfgs)
  assert any(True in np.ravel(c['only_cross_attention']) for c in cfgs)
  assert any(c['time_cond_proj_dim'] for c in cfgs)
  assert any(c['upcast_attention'] for c in cfgs)
  assert {None, 'UNetMidBlock2DCrossAttn'} <= {c['mid_block_type']
                                               for c in cfgs}
  blocks = set()
  for c in cfgs:
    blocks |= set(c['down_block_types']) | set(c['up_block_types'])
  assert set(du.COND_DOWN_BLOCKS) | set(du.COND_UP_BLOCKS) <= blocks


@pytest.mark.parametrize('name', NAMES)
def test_port_matches_diffusers_with_and_without_caption_masks(name):
  module, params = du.from_pretrained(os.path.join(FIXTURES, name))
  assert isinstance(module, du.UNet2DCondition)
  ref = np.load(os.path.join(FIXTURES, name, 'reference.npz'))
  cond = ref['timestep_cond'] if 'timestep_cond' in ref else None
  apply = module.apply   # eager: two calls compile slower than they run
  for mask, want in ((ref['encoder_attention_mask'], ref['output']),
                     (None, ref['output_unmasked'])):
    out = np.asarray(apply(params, ref['sample'], ref['timestep'],
                           ref['encoder_hidden_states'], mask, cond))
    assert out.shape == want.shape
    # The figure: max |ours - diffusers| / max |diffusers| <= 1e-4.
    assert np.abs(out - want).max() / np.abs(want).max() <= 1e-4
  # The mask matters here, so the comparison above can fail.
  assert np.abs(ref['output'] - ref['output_unmasked']).max() > 1e-2


def _copy(tmp_path, name='sd1_conv'):
  d = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), d)
  return d


@pytest.mark.parametrize('change,needle', [
    ({'addition_embed_type': 'text_time'}, "addition_embed_type='text_time' "
     'is not supported'),
    ({'class_embed_type': 'timestep'}, 'class_embed_type'),
    ({'encoder_hid_dim': 16}, 'encoder_hid_dim=16'),
    ({'attention_type': 'gated'}, 'attention_type'),
    ({'time_embedding_type': 'fourier'}, 'time_embedding_type'),
    ({'down_block_types': ['SimpleCrossAttnDownBlock2D', 'DownBlock2D']},
     "unsupported block type 'SimpleCrossAttnDownBlock2D'"),
    ({'mid_block_type': 'UNetMidBlock2DSimpleCrossAttn'}, 'mid_block_type'),
    ({'cross_attention_dim': [12, 16]}, 'cross_attention_dim must be the '
     'same'),
    ({'attention_head_dim': [2, 2, 2]}, 'attention_head_dim must have one '
     'entry per block'),
    ({'frobnicate': 3}, "unknown UNet2DConditionModel config key "
     "'frobnicate'"),
    ({'resnet_time_scale_shift': 'scale_shift'}, 'resnet_time_scale_shift'),
])
def test_unsupported_keys_end_in_one_line_naming_the_key(tmp_path, change,
                                                         needle):
  d = _copy(tmp_path)
  json.dump(dict(_cfg('sd1_conv'), **change), open(d / 'config.json', 'w'))
  with pytest.raises(du.DiffusersImportError) as e:
    du.from_pretrained(str(d))
  msg = str(e.value)
  assert needle in msg and '\n' not in msg, msg


def test_missing_and_misshapen_weights_end_in_one_line(tmp_path):
  d = _copy(tmp_path)
  path = str(d / du.WEIGHTS_FILE)
  state = load_file(path)
  key = 'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight'
  missing = {k: v for k, v in state.items() if k != key}
  save_file(missing, path)
  with pytest.raises(du.DiffusersImportError) as e:
    du.from_pretrained(str(d))
  assert 'lacks weight params/down_blocks_0/attentions_0/' \
         'transformer_blocks_0/attn2/to_k/kernel' in str(e.value) and '\n' not in str(e.value)
  # A caption width other than config.json's cross_attention_dim.
  save_file(dict(state, **{key: np.zeros((4, 7), np.float32)}), path)
  with pytest.raises(du.DiffusersImportError) as e:
    du.from_pretrained(str(d))
  assert 'attn2/to_k/kernel has shape (7, 4)' in str(e.value)
  save_file(dict(state, extra=np.zeros(3, np.float32)), path)
  with pytest.raises(du.DiffusersImportError, match='has weight params/extra'):
    du.from_pretrained(str(d))


def _pipeline(tmp_path, vae=False):
  """A Stable-Diffusion-layout pipeline around the sd1_conv fixture: its
  unet/, SD's scaled-linear DDPM schedule in scheduler/, model_index.json;
  with `vae`, the sd_like AutoencoderKL (16x16x3 images to its 8x8x4
  latents) in vae/."""
  p = tmp_path / 'pipe'
  index = {'_class_name': 'StableDiffusionPipeline',
           'unet': ['diffusers', 'UNet2DConditionModel'],
           'scheduler': ['diffusers', 'PNDMScheduler']}
  shutil.copytree(os.path.join(FIXTURES, 'sd1_conv'), p / 'unet')
  os.remove(p / 'unet' / 'reference.npz')
  if vae:
    shutil.copytree(os.path.join(VAE_FIXTURES, 'sd_like'), p / 'vae')
    os.remove(p / 'vae' / 'reference.npz')
    index['vae'] = ['diffusers', 'AutoencoderKL']
  (p / 'scheduler').mkdir()
  json.dump({'_class_name': 'PNDMScheduler', 'beta_schedule':
             'scaled_linear', 'beta_start': 0.00085, 'beta_end': 0.012,
             'num_train_timesteps': 1000, 'prediction_type': 'epsilon'},
            open(p / 'scheduler' / 'scheduler_config.json', 'w'))
  json.dump(index, open(p / 'model_index.json', 'w'))
  return p


def _latents_file(tmp_path, n=64, length=5, dim=12):
  """Captioned 8x8x4 latents: two captions, two means."""
  rng = np.random.default_rng(3)
  ids = np.arange(n) % 2
  x = rng.standard_normal((n, 8, 8, 4)).astype(np.float32) * 0.5
  x += np.where(ids == 0, -0.5, 0.5)[:, None, None, None]
  emb = rng.standard_normal((2, length, dim)).astype(np.float32)
  mask = np.ones((2, length), np.float32)
  mask[1, 3:] = 0
  path = str(tmp_path / 'latents.npz')
  np.savez(path, x=x, caption_id=ids, emb=emb, mask=mask,
           null_emb=np.zeros((length, dim), np.float32),
           null_mask=np.ones(length, np.float32),
           captions=np.array(['dark', 'bright']))
  return path


def _images_file(tmp_path, n=64, length=5, dim=12, size=16):
  """Captioned size x size x 3 images in [-1, 1]: two captions, two means."""
  rng = np.random.default_rng(4)
  ids = np.arange(n) % 2
  x = rng.standard_normal((n, size, size, 3)) * 0.3
  x += np.where(ids == 0, -0.5, 0.5)[:, None, None, None]
  emb = rng.standard_normal((2, length, dim)).astype(np.float32)
  mask = np.ones((2, length), np.float32)
  mask[1, 3:] = 0
  path = str(tmp_path / f'images{size}.npz')
  np.savez(path, x=np.clip(x, -1, 1).astype(np.float32), caption_id=ids,
           emb=emb, mask=mask, null_emb=np.zeros((length, dim), np.float32),
           null_mask=np.ones(length, np.float32),
           captions=np.array(['dark', 'bright']))
  return path


def test_a_pipeline_is_a_caption_conditioned_latent_teacher(tmp_path):
  """teacher.checkpoint=latent.vae_checkpoint=<pipeline>: the run is latent
  in the pipeline's AutoencoderKL, as diffusers' pipelines are (latent =
  (mean - shift) * scaling_factor, encoded once and cached in W/vae), and
  the teacher's denoiser is diffusers' UNet at the mapped step with the
  caption as encoder_hidden_states."""
  import tiny
  from mmd_jax.models import diffusers_vae
  from mmd_jax.run.stage_dir import open_stage
  pipe = _pipeline(tmp_path, vae=True)
  w = tmp_path / 'w'
  images = _images_file(tmp_path)
  tiny.run('toy2d_text', 'tiny', w, {
      'data.name': 'points', 'data.path': images,
      'teacher.checkpoint': str(pipe), 'latent.vae_checkpoint': str(pipe),
      'stages': ('teacher',)})
  # (test_captions scores arrays files end to end, with a UNet trained
  # here; the import is what this test is about.)
  assert json.load(open(w / 'teacher' / 'diffusers' / 'import.json'))[
      'beta_schedule'] == 'scaled_linear'
  assert json.load(open(w / 'vae' / 'stage.json'))['imported_from'] == str(
      pipe / 'vae')
  stage = open_stage(str(w / 'teacher'))
  # The space: diffusers' latents of the data, cached in W/vae.
  vae, vae_params = diffusers_vae.from_pretrained(str(pipe / 'vae'))
  x = np.load(images)['x']
  mean, _ = vae.apply(vae_params, x[:8], method=vae.encode)
  assert vae.cfg.shift_factor is None
  z = stage.ctx.dataset.train['x']
  assert z.shape == (64, 8, 8, 4) and stage.ctx.dataset.kind == 'arrays'
  np.testing.assert_allclose(z[:8], np.asarray(mean) * 0.18215, rtol=1e-5,
                             atol=1e-6)
  cached = [f for f in os.listdir(w / 'vae') if f.startswith('latents_')]
  assert len(cached) == 1
  np.testing.assert_array_equal(np.load(w / 'vae' / cached[0])['z'], z)
  np.testing.assert_allclose(
      stage.ctx.space.decode(z[:2]), np.asarray(vae.apply(
          vae_params, mean[:2], method=vae.decode)), rtol=1e-5, atol=1e-5)
  # The denoiser is the network: eps at step n for this caption.
  spec, params = stage.ctx.spec, stage.state.sampling_params
  module, unet_params = du.from_pretrained(str(pipe / 'unet'))
  table = stage.ctx.dataset.captions
  cond = jax.tree.map(jax.numpy.asarray, table.gather(np.array([1, 0])))
  z = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(
      np.float32)
  n = 317
  lam = spec.schedule.logsnr_table()[n]
  eps = module.apply(unet_params, z, np.full(2, n), cond['emb'],
                     cond['mask'])
  out = spec.module.apply(params, z, np.full(2, lam, np.float32), cond)
  np.testing.assert_allclose(np.asarray(out), np.asarray(eps), rtol=1e-4,
                             atol=1e-4 * float(np.abs(eps).max()))


def test_a_vae_that_does_not_fit_the_data_is_refused(tmp_path):
  import tiny
  from mmd_jax.run.checks import ConfigError
  pipe = _pipeline(tmp_path, vae=True)

  def run(data, **kw):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w', dict({
        'data.name': 'points', 'data.path': data,
        'teacher.checkpoint': str(pipe), 'latent.vae_checkpoint': str(pipe),
        'stages': ('teacher',)}, **kw))
  with pytest.raises(ConfigError, match=r'^config.latent.vae_checkpoint: '
                     r'the VAE downsamples by 2; .* 15x15 images'):
    run(_images_file(tmp_path, size=15))
  # Without the VAE the pipeline's UNet meets 16x16x3 images.
  with pytest.raises(ConfigError, match=r'^config.teacher.checkpoint: the '
                     r'model takes \(8, 8\) x 4 samples'):
    run(_images_file(tmp_path), **{'latent.vae_checkpoint': ''})
  shutil.rmtree(pipe / 'vae')
  with pytest.raises(ConfigError, match='^config.latent.vae_checkpoint: the '
                     'pipeline .* has no vae/'):
    run(_images_file(tmp_path))
  assert not (tmp_path / 'w').exists()


def test_a_pipeline_that_does_not_fit_the_captions_is_refused(tmp_path):
  import tiny
  from mmd_jax.run.checks import ConfigError
  pipe = _pipeline(tmp_path)
  with pytest.raises(ConfigError, match='attends to 12-wide caption '
                     'embeddings.*are 7 wide'):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w', {
        'data.name': 'points', 'data.path': _latents_file(tmp_path, dim=7),
        'teacher.checkpoint': str(pipe), 'stages': ('teacher',)})
  with pytest.raises(ConfigError, match=r'takes \(8, 8\) x 4 samples'):
    tiny.run('digits', 'tiny', tmp_path / 'w2', {
        'teacher.checkpoint': str(pipe), 'stages': ('teacher',)})
  sched = pipe / 'scheduler' / 'scheduler_config.json'
  json.dump(dict(json.load(open(sched)), rescale_betas_zero_snr=True),
            open(sched, 'w'))
  with pytest.raises(ConfigError, match='rescale_betas_zero_snr=True is not '
                     'supported'):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w4', {
        'data.name': 'points', 'data.path': _latents_file(tmp_path),
        'teacher.checkpoint': str(pipe), 'stages': ('teacher',)})
  os.remove(pipe / 'unet' / 'config.json')
  with pytest.raises(ConfigError, match='unet has no config.json'):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w3', {
        'data.name': 'points', 'data.path': _latents_file(tmp_path),
        'teacher.checkpoint': str(pipe), 'stages': ('teacher',)})


def test_a_weightless_pipeline_is_described_and_refused_for_training(
    tmp_path):
  """configs/sd15's mechanism on the small fixture: while describing,
  config.json and prompts-only data will do; a training run refuses both
  (no weights, no examples for mm_alternating)."""
  import tiny
  from mmd_jax.run import config_check, describe
  from mmd_jax.run.checks import ConfigError, describing
  pipe = _pipeline(tmp_path)
  os.remove(pipe / 'unet' / du.WEIGHTS_FILE)
  full = np.load(_latents_file(tmp_path))
  path = str(tmp_path / 'prompts.npz')
  np.savez(path, **{k: full[k] for k in full.files
                    if k not in ('x', 'caption_id')}, caption_id=[0])
  over = {'data.name': 'points', 'data.path': path,
          'data.example_shape': (8, 8, 4), 'teacher.checkpoint': str(pipe),
          'stages': ('teacher', 'mm_alternating')}
  c = tiny.config('toy2d_text', 'tiny', over)
  with describing():
    config_check.validate(c)
  with pytest.raises(ConfigError, match='has no diffusion_pytorch_model'):
    config_check.validate(c)
  c.stages = ('teacher',)
  d = describe.describe(c, str(tmp_path / 'd'))
  assert d['networks']['teacher']['params'] == 51684   # the fixture's count
