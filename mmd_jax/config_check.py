"""Early config validation: one clear line naming the key, before any compile."""
from __future__ import annotations

import os

from mmd_jax import diffusion
from mmd_jax.data import DATASETS
from mmd_jax.data.images import IMAGE_DATASETS
from mmd_jax.data.toy2d import TOY2D_NAMES
from mmd_jax.methods import emd
from mmd_jax.methods.moment_matching import RENOISE, S_RANGES, WEIGHTINGS
from mmd_jax.models import DTYPES, MODELS

STAGES = ('teacher', 'vae', 'mm_alternating', 'mm_parameter', 'emd',
          'diff_instruct', 'evaluate')
IMPLEMENTED_STAGES = ('teacher', 'vae', 'mm_alternating', 'mm_parameter',
                      'emd', 'diff_instruct', 'evaluate')


class ConfigError(ValueError):
  """A bad config value. str() is the one line shown to the user."""


def _need(cond: bool, key: str, msg: str):
  if not cond:
    raise ConfigError(f'config.{key}: {msg}')


def _positive_int(c, key):
  v = c
  for part in key.split('.'):
    v = v[part]
  _need(isinstance(v, int) and v >= 1, key, f'must be an integer >= 1, got {v!r}')


def validate(config):
  stages = tuple(config.stages)
  _need(len(stages) > 0, 'stages', 'is empty')
  for s in stages:
    _need(s in STAGES, 'stages', f'unknown stage {s!r}; known: {STAGES}')
    _need(s in IMPLEMENTED_STAGES, 'stages',
          f'stage {s!r} is not implemented yet in this version')

  d = config.data
  _need(d.name in DATASETS, 'data.name',
        f'unknown dataset {d.name!r}; known: {DATASETS}')
  if d.name == 'toy2d':
    _need(d.toy_name in TOY2D_NAMES, 'data.toy_name',
          f'unknown toy2d distribution {d.toy_name!r}; known: {TOY2D_NAMES}')
    _positive_int(config, 'data.num_train')
  if d.name == 'points':
    _need(bool(d.path), 'data.path', 'points data needs a .npy file path')
    _need(os.path.isfile(d.path), 'data.path', f'file {d.path!r} does not exist')

  m = config.model
  _need(m.name in MODELS, 'model.name', f'unknown model {m.name!r}; known: {MODELS}')
  _need(m.parameterization in diffusion.PARAMETERIZATIONS,
        'model.parameterization',
        f'unknown {m.parameterization!r}; known: {diffusion.PARAMETERIZATIONS}')
  _need(0.0 <= m.dropout < 1.0, 'model.dropout', 'must be in [0, 1)')
  images = d.name == 'digits' or d.name in IMAGE_DATASETS
  if m.conditional:
    _need(images, 'model.conditional',
          f'dataset {d.name!r} has no labels; set it to False')
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

  _need(config.diffusion.schedule in diffusion.SCHEDULES, 'diffusion.schedule',
        f'unknown schedule {config.diffusion.schedule!r}; '
        f'known: {diffusion.SCHEDULES}')
  _need(config.diffusion.logsnr_min < config.diffusion.logsnr_max,
        'diffusion.logsnr_min', 'must be below diffusion.logsnr_max')

  t = config.teacher
  for key in ('num_train_steps', 'batch_size'):
    _positive_int(config, f'teacher.{key}')
  _need(t.learning_rate > 0, 'teacher.learning_rate',
        f'must be > 0, got {t.learning_rate}')
  _need(t.warmup_steps >= 0, 'teacher.warmup_steps', 'must be >= 0')
  _need(0.0 <= t.ema_decay < 1.0, 'teacher.ema_decay', 'must be in [0, 1)')
  _need(t.loss_weight in diffusion.LOSS_WEIGHTS, 'teacher.loss_weight',
        f'unknown {t.loss_weight!r}; known: {diffusion.LOSS_WEIGHTS}')
  _need(0.0 <= t.label_dropout < 1.0, 'teacher.label_dropout',
        'must be in [0, 1)')
  if t.checkpoint:
    _need(os.path.exists(t.checkpoint), 'teacher.checkpoint',
          f'{t.checkpoint!r} does not exist')
    _need(os.path.isdir(t.checkpoint) or t.checkpoint.endswith(
        ('.npz', '.msgpack')), 'teacher.checkpoint',
          f'{t.checkpoint!r} is neither a teacher stage directory nor a '
          '.npz/.msgpack parameter file')

  dd = config.distill
  for k in dd.sampling_steps:
    _need(isinstance(k, int) and k >= 1, 'distill.sampling_steps',
          f'every k must be an integer >= 1, got {k!r}')
  if any(s in ('mm_alternating', 'mm_parameter') for s in stages):
    _need(len(dd.sampling_steps) > 0, 'distill.sampling_steps', 'is empty')
    for key in ('num_train_steps', 'batch_size'):
      _positive_int(config, f'distill.{key}')
    _need(dd.learning_rate > 0, 'distill.learning_rate',
          f'must be > 0, got {dd.learning_rate}')
    _need(dd.warmup_steps >= 0, 'distill.warmup_steps', 'must be >= 0')
    for key in ('weighting', 'weighting_small_k'):
      _need(dd[key] in WEIGHTINGS, f'distill.{key}',
            f'unknown {dd[key]!r}; known: {WEIGHTINGS}')
    _need(dd.renoise in RENOISE, 'distill.renoise',
          f'unknown {dd.renoise!r}; known: {RENOISE}')
    _need(dd.s_range in S_RANGES, 'distill.s_range',
          f'unknown {dd.s_range!r}; known: {S_RANGES}')
    if 'mm_parameter' in stages:
      _need(dd.batch_size % 2 == 0, 'distill.batch_size',
            'must be even: mm_parameter splits it into batches A and B')
      _need(dd.precond_eps > 0, 'distill.precond_eps', 'must be > 0')
  if any(s in ('emd', 'diff_instruct') for s in stages):
    for key in ('num_train_steps', 'batch_size'):
      _positive_int(config, f'distill.{key}')
    _need(dd.warmup_steps >= 0, 'distill.warmup_steps', 'must be >= 0')
    _validate_emd(config)
  lat = config.get('latent')
  vae_ckpt = lat.vae_checkpoint if lat is not None else ''
  if 'vae' in stages or vae_ckpt:
    _validate_vae(config)
  if vae_ckpt:
    _need(os.path.isdir(vae_ckpt), 'latent.vae_checkpoint',
          f'{vae_ckpt!r} is not a VAE stage directory')
  if vae_ckpt or ('vae' in stages and len(set(stages) - {'vae', 'evaluate'})):
    _need(d.name not in IMAGE_DATASETS, 'latent',
          f'latent diffusion needs in-memory data (digits, toy2d, points); '
          f'{d.name} is streamed')
  _positive_int(config, 'checkpoint.keep')
  _need(config.checkpoint.every_steps >= 0, 'checkpoint.every_steps',
        'must be >= 0')
  _positive_int(config, 'log.every_steps')

  e = config.eval
  _positive_int(config, 'eval.num_samples')
  _positive_int(config, 'eval.batch_size')
  for k in e.teacher_steps:
    _need(isinstance(k, int) and k >= 1, 'eval.teacher_steps',
          f'every k must be an integer >= 1, got {k!r}')
  for key in ('inception_weights', 'fid_reference'):
    if e[key]:
      _need(os.path.isfile(e[key]), f'eval.{key}', f'file {e[key]!r} does not exist')
  if e.inception_weights:
    _need(images, 'eval.inception_weights', 'Inception metrics need image data')
  if d.name in IMAGE_DATASETS and 'evaluate' in stages:
    _need(bool(e.inception_weights), 'eval.inception_weights',
          f'FID on {d.name} needs the Inception weights file: convert '
          "pytorch-fid's .pth with `python -m "
          'mmd_jax.evaluation.convert_inception` (README, "Evaluation")')
  _need(isinstance(e.every_steps, int) and e.every_steps >= 0,
        'eval.every_steps', f'must be an integer >= 0, got {e.every_steps!r}')
  _positive_int(config, 'eval.num_reference')
  _positive_int(config, 'eval.pr_num_samples')
  for s in e.samplers:
    _need(s in ('ancestral', 'ddim'), 'eval.samplers', f'unknown sampler {s!r}')

  _positive_int(config, 'grad_accum_steps')
  _positive_int(config, 'max_nonfinite_steps')
  n = config.grad_accum_steps
  _need(t.batch_size % n == 0, 'grad_accum_steps',
        f'{n} does not divide teacher.batch_size={t.batch_size}')
  if any(s in ('mm_alternating', 'emd', 'diff_instruct') for s in stages):
    _need(dd.batch_size % n == 0, 'grad_accum_steps',
          f'{n} does not divide distill.batch_size={dd.batch_size}')
  if 'mm_parameter' in stages:
    _need(dd.batch_size % (2 * n) == 0, 'grad_accum_steps',
          f'{n} does not divide half of distill.batch_size={dd.batch_size} '
          '(mm_parameter splits it into batches A and B)')
  for axis in config.mesh.keys():
    _need(axis in ('data', 'fsdp'), 'mesh', f'unknown mesh axis {axis!r}')


def _check_emd_setting(v, where):
  """The EMD sampler settings in `v` (config.emd or a sweep entry's merge)."""
  def key(k):
    return f'emd.{k}' if where == 'emd' else f'{where} ({k})'
  _need(isinstance(v['langevin_steps'], int) and v['langevin_steps'] >= 0,
        key('langevin_steps'),
        f"must be an integer >= 0, got {v['langevin_steps']!r}")
  _need(v['parameterization'] in emd.PARAMETERIZATIONS, key('parameterization'),
        f"unknown {v['parameterization']!r}; known: {emd.PARAMETERIZATIONS}")
  _need(v['noise_cancellation'] in emd.CANCELLATIONS,
        key('noise_cancellation'),
        f"unknown {v['noise_cancellation']!r}; known: {emd.CANCELLATIONS}")
  _need(v['weighting'] in emd.WEIGHTINGS, key('weighting'),
        f"unknown {v['weighting']!r}; known: {emd.WEIGHTINGS}")
  _need(0.0 < v['gamma_eps'] <= 1.0, key('gamma_eps'),
        f"must be in (0, 1], got {v['gamma_eps']}")
  _need(0.0 <= v['gamma_z'] <= 1.0, key('gamma_z'),
        f"must be in [0, 1], got {v['gamma_z']}")
  _need(0.0 < v['t_min'] < v['t_max'] < 1.0, key('t_min'),
        f"need 0 < t_min < t_max < 1, got {v['t_min']}, {v['t_max']}")
  _need(isinstance(v['score_updates'], int) and v['score_updates'] >= 1,
        key('score_updates'), f"must be an integer >= 1, got {v['score_updates']!r}")


def _validate_emd(config):
  e = config.emd
  for k in ('generator_learning_rate', 'score_learning_rate'):
    _need(e[k] > 0, f'emd.{k}', f'must be > 0, got {e[k]}')
  _need(0.0 <= e.b1 < 1.0 and 0.0 <= e.b2 < 1.0, 'emd.b1',
        'emd.b1 and emd.b2 must be in [0, 1)')
  _check_emd_setting(e, 'emd')
  from mmd_jax import emd_stages  # late: emd_stages imports train (clu)
  for i, entry in enumerate(e.sweep):
    try:
      overrides = emd_stages.parse_sweep_entry(entry, e)
    except ValueError as err:
      raise ConfigError(f'config.emd.sweep[{i}]: {err}') from None
    merged = {k: e[k] for k in emd_stages.HPARAM_KEYS}
    merged.update(overrides)
    _check_emd_setting(merged, f'emd.sweep[{i}]')


def _validate_vae(config):
  from mmd_jax.models.vae import ARCHS, LIKELIHOODS
  v = config.get('vae')
  _need(v is not None, 'vae', 'the vae stage needs a config.vae block '
        '(see configs/default.py)')
  for key in ('latent_dim', 'hidden', 'num_samples', 'batch_size',
              'num_train_steps', 'iwae_samples', 'eval_batch_size'):
    _positive_int(config, f'vae.{key}')
  _need(v.arch in ARCHS, 'vae.arch', f'unknown {v.arch!r}; known: {ARCHS}')
  _need(v.likelihood in LIKELIHOODS, 'vae.likelihood',
        f'unknown {v.likelihood!r}; known: {LIKELIHOODS}')
  _need(v.optimizer in ('adam', 'adagrad'), 'vae.optimizer',
        f"unknown {v.optimizer!r}; known: ('adam', 'adagrad')")
  _need(v.learning_rate > 0, 'vae.learning_rate',
        f'must be > 0, got {v.learning_rate}')
  _need(config.data.name not in ('toy2d', 'points') or v.arch == 'mlp',
        'vae.arch', 'conv needs image data; use mlp for points')
  _need(v.iwae_samples % min(100, v.iwae_samples) == 0, 'vae.iwae_samples',
        f'must be below 100 or a multiple of 100, got {v.iwae_samples}')
