"""The Flax port of diffusers' AutoencoderKL against diffusers itself:
tests/fixtures/diffusers_vae holds tiny random autoencoders written by
tests/fixtures/make_diffusers_fixtures.py (run by hand with torch) and
diffusers' posterior mean, log-variance and decoder output on fixed
inputs. No torch here."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mmd_jax.models import diffusers_unet as du
from mmd_jax.models import diffusers_vae as dv

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'fixtures', 'diffusers_vae')
NAMES = sorted(os.listdir(FIXTURES))


def _rel(ours, want):
  return float(np.abs(np.asarray(ours) - want).max() / np.abs(want).max())


@pytest.mark.parametrize('name', NAMES)
def test_encode_and_decode_match_diffusers(name):
  module, params = dv.from_pretrained(os.path.join(FIXTURES, name))
  ref = np.load(os.path.join(FIXTURES, name, 'reference.npz'))
  # Eager: one call each compiles slower than it runs.
  mean, logvar = module.apply(params, ref['x'], method=module.encode)
  decoded = module.apply(params, ref['z'], method=module.decode)
  assert mean.shape == ref['mean'].shape
  assert decoded.shape == ref['decoded'].shape
  # The figure: max |ours - diffusers| / max |diffusers| <= 1e-4, each.
  assert _rel(mean, ref['mean']) <= 1e-4
  assert _rel(logvar, ref['logvar']) <= 1e-4
  assert _rel(decoded, ref['decoded']) <= 1e-4


def test_scaling_and_shift_factors_are_read_from_the_config():
  cfgs = {n: dv.from_pretrained(os.path.join(FIXTURES, n))[0].cfg
          for n in NAMES}
  assert cfgs['sd_like'].scaling_factor == pytest.approx(0.18215)
  assert cfgs['sd_like'].shift_factor is None
  assert cfgs['three_levels_shift'].shift_factor == pytest.approx(0.1)
  assert not cfgs['three_levels_shift'].use_quant_conv


def _copy(tmp_path, name='sd_like'):
  d = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), d)
  return d


@pytest.mark.parametrize('change,needle', [
    ({'down_block_types': ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D']},
     "unsupported block type 'AttnDownEncoderBlock2D'"),
    ({'norm_type': 'spatial'}, "unknown AutoencoderKL config key "
     "'norm_type'"),
    ({'_class_name': 'AsymmetricAutoencoderKL'}, 'is not AutoencoderKL'),
    ({'block_out_channels': [8, 32]}, 'has shape'),
])
def test_unsupported_configs_end_in_one_line(tmp_path, change, needle):
  d = _copy(tmp_path)
  cfg = json.load(open(d / 'config.json'))
  json.dump(dict(cfg, **change), open(d / 'config.json', 'w'))
  with pytest.raises(du.DiffusersImportError) as e:
    dv.from_pretrained(str(d))
  assert needle in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_missing_weights_end_in_one_line(tmp_path):
  d = _copy(tmp_path)
  path = str(d / du.WEIGHTS_FILE)
  state = load_file(path)
  key = 'decoder.mid_block.attentions.0.to_v.weight'
  save_file({k: v for k, v in state.items() if k != key}, path)
  with pytest.raises(du.DiffusersImportError) as e:
    dv.from_pretrained(str(d))
  assert 'lacks weight params/decoder/mid_block/attentions_0/to_v/kernel' \
      in str(e.value)
  os.remove(path)
  with pytest.raises(du.DiffusersImportError, match='has no diffusion_'):
    dv.from_pretrained(str(d))
