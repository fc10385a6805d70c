"""Early config validation: one clear line naming the key, before any
compile. This file checks the run-level sections (data, model, diffusion,
eval, mesh, ...) and the plan; each method checks its own sections
(`Method.validate`, called by plan.make_plan)."""
from __future__ import annotations


from mmd_jax import plugins as registry
from mmd_jax.workdir import fs
from mmd_jax.numerics import diffusion
from mmd_jax.device import parallel
from mmd_jax.run import plan as plan_lib
from mmd_jax.run.checks import (ConfigError, guidance_needs_labels,
                                is_describing, need as _need)
from mmd_jax.run.checks import one_of, positive_int as _positive_int
from mmd_jax.run import checks
from mmd_jax.data import DATASETS, data_shape
from mmd_jax.data.images import IMAGE_DATASETS
from mmd_jax.data.toy2d import TOY2D_NAMES
from mmd_jax.models import DTYPES, MODELS

FROZEN_DTYPES = ('float32', 'bfloat16')

# Kept importable from here.
__all__ = ['ConfigError', 'validate']


def validate(config) -> plan_lib.Plan:
  """Checks the config; returns the run's plan."""
  stages = tuple(config.stages)
  d = config.data
  _check_data(config)
  shape = data_shape(d)
  # NHWC examples: pixels, or the images and latents of a data file.
  images = len(tuple(shape.example_shape)) == 3
  _check_model(config, images)
  _check_diffusion(config)
  _check_run(config)
  _check_eval(config, shape.kind in ('digits', 'images'), stages)
  _need(not tuple(d.get('example_shape', ())) or not shape.has_examples,
        'data.example_shape', 'is for prompts-only caption files; this '
        "data has examples (their shape is the data's)")
  guidance_needs_labels(config, 'eval.guidance', shape)
  sig = shape.caption_signature
  if config.model.conditional and sig is not None and sig.null is None:
    _need(not config.teacher.label_dropout, 'teacher.label_dropout',
          f'{config.teacher.label_dropout} drops captions to the null '
          'caption, and the caption file has no null_emb; add it or set '
          'this to 0')
  plan = plan_lib.make_plan(config, shape)
  if not shape.has_examples and not is_describing():
    _need(not plan.latent, 'data.path', f'{d.path!r} holds prompts only (no '
          'array x); a latent run encodes examples, and there are none')
    free = [m.name for m in registry.methods() if not m.needs_examples]
    for item in plan.items:
      if item is not plan_lib.EVALUATE and item.train and \
          item.method.needs_examples:
        _need(False, 'data.path',
              f'{d.path!r} holds prompts only (no array x), and '
              f'{item.job.name} trains on examples; on prompts only, import '
              f'the teacher (teacher.checkpoint) and train one of {free}')
  if plan.latent:
    _need(d.name not in IMAGE_DATASETS, 'latent',
          f'latent diffusion needs in-memory data (digits, toy2d, points); '
          f'{d.name} is streamed')
  return plan


def _check_data(config):
  d = config.data
  _need(d.name in DATASETS, 'data.name',
        f'unknown dataset {d.name!r}; known: {DATASETS}')
  if d.name == 'toy2d':
    _need(d.toy_name in TOY2D_NAMES, 'data.toy_name',
          f'unknown toy2d distribution {d.toy_name!r}; known: {TOY2D_NAMES}')
    _positive_int(config, 'data.num_train')
  if d.name == 'points':
    _need(bool(d.path), 'data.path',
          'points data needs a .npy file path (or a captioned .npz)')
    _need(fs.isfile(d.path), 'data.path', f'file {d.path!r} does not exist')
  shape = tuple(d.get('example_shape', ()))
  _need(all(isinstance(v, int) and v > 0 for v in shape), 'data.example_shape',
        f'must be a tuple of positive integers, got {shape!r}')


def _check_model(config, images: bool):
  d, m = config.data, config.model
  _need(m.name in MODELS, 'model.name', f'unknown model {m.name!r}; known: {MODELS}')
  _need(m.parameterization in diffusion.PARAMETERIZATIONS,
        'model.parameterization',
        f'unknown {m.parameterization!r}; known: {diffusion.PARAMETERIZATIONS}')
  _need(0.0 <= m.dropout < 1.0, 'model.dropout', 'must be in [0, 1)')
  if m.conditional:
    captioned = d.name in ('toy2d_text', 'digits_text') or (
        d.name == 'points' and str(d.path).endswith('.npz'))
    _need(images or captioned, 'model.conditional',
          f'dataset {d.name!r} has no labels or captions; set it to False')
  if m.name != 'mlp':
    _need(images, 'model.name',
          f'the {m.name} needs image data, not data.name={d.name!r}')
  if m.name == 'uvit':
    _need(m.dtype in DTYPES, 'model.dtype',
          f'unknown {m.dtype!r}; known: {DTYPES}')
    for key in ('patch_size', 'transformer_width', 'transformer_depth',
                'num_heads', 'mlp_ratio', 'channels', 'num_res_blocks'):
      _positive_int(config, f'model.{key}')
    _need(m.transformer_width % m.num_heads == 0, 'model.transformer_width',
          f'{m.transformer_width} is not divisible by model.num_heads='
          f'{m.num_heads}')


def _check_diffusion(config):
  _need(config.diffusion.schedule in diffusion.SCHEDULES, 'diffusion.schedule',
        f'unknown schedule {config.diffusion.schedule!r}; '
        f'known: {diffusion.SCHEDULES}')
  _need(config.diffusion.logsnr_min < config.diffusion.logsnr_max,
        'diffusion.logsnr_min', 'must be below diffusion.logsnr_max')


def _check_run(config):
  """Checkpoints, logging, numerics and the mesh."""
  _positive_int(config, 'checkpoint.keep')
  _need(config.checkpoint.every_steps >= 0, 'checkpoint.every_steps',
        'must be >= 0')
  _positive_int(config, 'log.every_steps')
  _positive_int(config, 'grad_accum_steps')
  one_of(config, 'matmul_precision', parallel.PRECISIONS)
  one_of(config, 'teacher.frozen_dtype', FROZEN_DTYPES)
  _positive_int(config, 'max_nonfinite_steps')
  for axis in config.mesh.keys():
    _need(axis in ('data', 'fsdp'), 'mesh', f'unknown mesh axis {axis!r}')


def _check_eval(config, images: bool, stages: tuple):
  d, e = config.data, config.eval
  _positive_int(config, 'eval.num_samples')
  _positive_int(config, 'eval.batch_size')
  _positive_int(config, 'eval.num_seeds')
  for k in e.teacher_steps:
    _need(isinstance(k, int) and k >= 1, 'eval.teacher_steps',
          f'every k must be an integer >= 1, got {k!r}')
  checks.time_powers(config, 'eval.time_powers', 'eval.teacher_steps')
  for key in ('inception_weights', 'fid_reference'):
    if e[key]:
      _need(fs.isfile(e[key]), f'eval.{key}', f'file {e[key]!r} does not exist')
  if e.inception_weights:
    _need(images, 'eval.inception_weights', 'Inception metrics need pixel data (digits or a tfds '
          'image dataset), not arrays from a file')
  if d.name in IMAGE_DATASETS and plan_lib.EVALUATE in stages:
    _need(bool(e.inception_weights), 'eval.inception_weights',
          f'FID on {d.name} needs the Inception weights file: convert '
          "pytorch-fid's .pth with `python -m "
          'mmd_jax.evaluation.convert_inception` (docs/evaluation_and_sampling.md)')
  _need(isinstance(e.every_steps, int) and e.every_steps >= 0,
        'eval.every_steps', f'must be an integer >= 0, got {e.every_steps!r}')
  _positive_int(config, 'eval.num_reference')
  _positive_int(config, 'eval.pr_num_samples')
  for s in e.samplers:
    _need(s in ('ancestral', 'ddim'), 'eval.samplers', f'unknown sampler {s!r}')
