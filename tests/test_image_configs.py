"""The paper's image configs: validation, model size, and a smoke run of
every stage under tensorflow_datasets.testing.mock_data."""
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax import config_check
from mmd_jax.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('cifar10', 'imagenet64', 'imagenet128')
VARIANTS = ('teacher', 'mm_alternating', 'mm_parameter', 'emd', 'smoke')

# Runs main under mock data; a random Inception stands in for the real one
# (its FIDs mean nothing, but every code path runs).
DRIVER = '''
import sys
import tensorflow_datasets as tfds
from absl import app
from mmd_jax import main
sys.argv = ['main'] + sys.argv[1:]
with tfds.testing.mock_data(num_examples=24):
  app.run(main.main)
'''


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


@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_runs_every_stage_under_mock_data(name, tmp_path,
                                               inception_weights):
  w = tmp_path / 'w'
  # Tiny graphs: compile time dominates, and XLA's optimisations cost more
  # than they save here.
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  r = subprocess.run(
      [sys.executable, '-c', DRIVER, f'--config=configs/{name}.py:smoke',
       f'--workdir={w}', f'--config.eval.inception_weights={inception_weights}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(w / 'report.json'))
  assert rep['dataset'] == name
  assert [(row['model'], row['steps']) for row in rep['rows']] == [
      ('teacher', 2), ('mm_alternating', 2), ('mm_parameter', 2), ('emd', 1)]
  for row in [{'metrics': rep['reference']}] + rep['rows']:
    assert set(row['metrics']) == {'fid', 'inception_score', 'precision',
                                   'recall'}
    assert all(np.isfinite(v) for v in row['metrics'].values())
  assert rep['fid_protocol']['reference'] == f'{name}/train'
  # Reference statistics from the tfds split, cached in the workdir.
  assert any(f.startswith('inception_ref_')
             for f in os.listdir(w / 'evaluate'))
  for stage in ('teacher', 'mm_alternating_k2', 'mm_parameter_k2', 'emd_k1'):
    assert (w / stage / 'stage.json').exists()
  for f in ('quality_vs_steps.png', 'samples_teacher_ancestral.png',
            'samples_emd_k1.png'):
    assert (w / f).stat().st_size > 1000
