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
  apply = jax.jit(module.apply)
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
