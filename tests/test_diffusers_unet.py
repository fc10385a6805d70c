"""The Flax port of diffusers' UNet2DModel against diffusers itself: the
fixtures (tests/fixtures/make_diffusers_fixtures.py, run by hand with torch)
hold random tiny models of every supported block type and diffusers'
outputs on fixed inputs. No torch here."""
import json
import os
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
