"""Draw samples from a stage's checkpoint.

python -m mmd_jax.sample --workdir=W/<stage> --steps=K --num_samples=N \
    --seed=S --output=F.npz

Writes `samples` (float32, data space) and, for conditional models, `labels`.
Stages of a latent run (latent.py) are decoded by their VAE.
The same seed gives the same samples, bit for bit, on the same machine.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A stage directory, e.g. W/teacher.')
_STEPS = flags.DEFINE_integer('steps', None,
                              'Sampling steps; default: the stage\'s own k '
                              '(students) or 256 (teacher).')
_NUM = flags.DEFINE_integer('num_samples', 1000, 'Number of samples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output .npz file.')
_SAMPLER = flags.DEFINE_enum('sampler', 'ancestral', ['ancestral', 'ddim'],
                             'Sampler.')
_GUIDANCE = flags.DEFINE_float('guidance', 0.0, 'CFG weight (conditional models).')
_BATCH = flags.DEFINE_integer('batch_size', 1000, 'Samples per device call.')
flags.mark_flags_as_required(['workdir', 'output'])


def _fail(msg):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  del argv
  import jax
  import ml_collections
  import numpy as np

  from mmd_jax import emd_stages, latent, parallel, stages
  from mmd_jax.evaluation import evaluate
  from mmd_jax.methods import teacher

  stage_dir = os.path.abspath(_WORKDIR.value)
  meta_path = os.path.join(stage_dir, 'stage.json')
  cfg_path = os.path.join(stage_dir, 'config.json')
  if not os.path.exists(meta_path) or not os.path.exists(cfg_path):
    _fail(f'{stage_dir} is not a stage directory (no stage.json/config.json)')
  with open(meta_path) as f:
    meta = json.load(f)
  with open(cfg_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  method = meta['method']
  if method not in ('teacher',) + stages.DISTILL_METHODS:
    _fail(f'sampling method {method!r} is not supported')

  from mmd_jax.data import load_dataset
  dataset = load_dataset(config.data)
  mesh = parallel.make_mesh(config.mesh)
  workdir = os.path.dirname(stage_dir)
  space = None
  if latent.is_latent(config):
    # Latent run: sample latents, write decoded data-space samples.
    space = latent.load_space(config, workdir, dataset, mesh)
    dataset = latent.latent_dataset(dataset, space)
  spec = stages.denoiser_spec(config, dataset)
  if method == 'teacher':
    config.unlock()
    config.teacher.checkpoint = stage_dir
    params = teacher.sampling_params(
        stages.load_teacher(config, workdir, dataset, spec, mesh))
  elif method in stages.EMD_METHODS:
    if _STEPS.value not in (None, 1):
      _fail(f'{stage_dir} holds a one-step generator; --steps must be 1')
    # The stage records its full setting, so a sweep member needs no config.
    setting = emd_stages.Setting(
        method, os.path.basename(stage_dir), meta['model'],
        tuple((k, meta['setting'][k]) for k in emd_stages.HPARAM_KEYS))
    params = stages.load_generator(config, workdir, dataset, spec, mesh,
                                   setting).generator_params
  else:
    params = stages.load_student(config, workdir, dataset, spec, mesh, method,
                                 int(meta['k'])).student_params
  # Students sample with their own k by default: it is saved in stage.json.
  k = _STEPS.value or meta.get('k') or 256
  samples, labels = evaluate.generate(
      spec, params, jax.random.PRNGKey(_SEED.value), _NUM.value, k,
      _SAMPLER.value, min(_BATCH.value, _NUM.value), dataset.example_shape,
      spec.num_classes, _GUIDANCE.value, meta.get('logsnr_generator'))
  if space is not None:
    samples = space.decode(samples)
  out = {'samples': samples.astype(np.float32)}
  if labels is not None:
    out['labels'] = labels
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  np.savez(_OUTPUT.value, **out)
  print(f'wrote {len(samples)} samples (k={k}) to {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
