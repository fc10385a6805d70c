"""The paper's image configs: validation, model size, and a smoke run of
every stage under tensorflow_datasets.testing.mock_data."""
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.run import config_check
from mmd_jax.models import build_model

CONFIGS = ('cifar10', 'imagenet64', 'imagenet128')
VARIANTS = ('teacher', 'mm_alternating', 'mm_parameter', 'emd', 'smoke')



def _get(name, variant):
  return importlib.import_module(f'configs.{name}').get_config(variant)


@pytest.mark.parametrize('name', CONFIGS)
def test_paper_configs_validate_and_ask_for_inception(name, tmp_path):
  weights = tmp_path / 'inception.npz'
  weights.write_bytes(b'x')
  for variant in VARIANTS:
    c = _get(name, variant)
    with pytest.raises(config_check.ConfigError,
                       match='config.eval.inception_weights: FID on'):
      config_check.validate(c)
    c.eval.inception_weights = str(weights)
    config_check.validate(c)
  c = _get(name, 'teacher')
  assert c.eval.num_samples == 50_000          # FID-50k
  assert c.distill.batch_size == 2048 and c.distill.sampling_steps == (8,)
  assert c.distill.num_train_steps == 200_000
  with pytest.raises(ValueError, match='unknown .* variant'):
    _get(name, 'nope')


@pytest.mark.parametrize('name,res', [('imagenet64', 64), ('imagenet128', 128)])
def test_imagenet_teacher_is_the_small_uvit(name, res):
  c = _get(name, 'teacher')
  module = build_model(c.model, 1000)
  shapes = jax.eval_shape(lambda: module.init(
      {'params': jax.random.PRNGKey(0)}, jnp.zeros((1, res, res, 3)),
      jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert 350e6 <= n <= 450e6, n


@pytest.fixture(scope='module')
def inception_weights(tmp_path_factory):
  from mmd_jax.evaluation import inception
  path = tmp_path_factory.mktemp('inception') / 'random.npz'
  inception.save_params(str(path), inception.random_params(0))
  return str(path)


# Every stage on imagenet64, the class-conditional UViT. cifar10 (the
# unconditional one) and imagenet128 (crop-and-resize data, patch 2) run
# their own data path, network and Inception evaluation through the teacher
# and the evaluation: the distillation steps are the same code at every
# resolution, and unconditional distillation is what the toy2d tests run.
SMOKE_STAGES = {
    # The MM steps on images run in test_diffusers_unet; the UViT's
    # teacher, MM and EMD steps and samplers in the device check
    # (test_bench); every step in the contract and mesh tests: each UViT
    # step compiles for ~30 s here.
    'cifar10': ('teacher', 'evaluate'),
    'imagenet64': ('teacher', 'evaluate'),
    # imagenet128's evaluation is the imagenet64 one on bigger images.
    'imagenet128': ('teacher',),
}
ALL_ROWS = [('teacher', 2), ('mm_alternating', 2), ('mm_parameter', 2),
            ('emd', 1)]


@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_runs_the_stages_under_mock_data(name, tmp_path,
                                              inception_weights):
  """In process, the way the flax examples test their loop: tfds mock data,
  and a random Inception standing in for the real one (its FIDs mean
  nothing, but every code path runs)."""
  import tensorflow_datasets as tfds
  from mmd_jax.run import runner
  w = tmp_path / 'w'
  c = _get(name, 'smoke')
  assert c.stages == ('teacher', 'mm_alternating', 'mm_parameter', 'emd',
                      'evaluate')
  c.eval.inception_weights = inception_weights
  # The variant's batch (64) is sized for describing an 8-device mesh; 8
  # rows are enough to run every code path here.
  c.teacher.batch_size = c.distill.batch_size = 8
  if SMOKE_STAGES[name]:
    c.stages = SMOKE_STAGES[name]
  with tfds.testing.mock_data(num_examples=24):
    runner.run(c, str(w))
  assert (w / 'teacher' / 'stage.json').exists()
  if 'evaluate' not in c.stages:
    return
  rep = json.load(open(w / 'report.json'))
  assert rep['dataset'] == name
  assert [(row['model'], row['steps']) for row in rep['rows']] == [
      r for r in ALL_ROWS if r[0] in c.stages]
  for row in [{'metrics': rep['reference']}] + rep['rows']:
    assert set(row['metrics']) == {'fid', 'inception_score', 'precision',
                                   'recall'}
    assert all(np.isfinite(v) for v in row['metrics'].values())
  assert rep['fid_protocol']['reference'] == f'{name}/train'
  # Reference statistics from the tfds split, cached in the workdir.
  assert any(f.startswith('inception_ref_')
             for f in os.listdir(w / 'evaluate'))
  for stage, k in [r for r in ALL_ROWS if r[0] in c.stages]:
    d = stage if stage == 'teacher' else f'{stage}_k{k}'
    assert (w / d / 'stage.json').exists()
  for f in ('quality_vs_steps.png', 'samples_teacher_ancestral.png') + (
      ('samples_emd_k1.png',) if 'emd' in c.stages else ()):
    assert (w / f).stat().st_size > 1000
