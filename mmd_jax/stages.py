"""Builds each stage of a run (a `train.Stage`) from the config.

Stage directories: `teacher`, and `<method>_k<k>` for students.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmd_jax import diffusion, emd_stages, teacher_io, train
from mmd_jax.data import batches
from mmd_jax.denoiser import DenoiserSpec
from mmd_jax.evaluation import plots
from mmd_jax.methods import emd
from mmd_jax.methods import moment_matching as mm
from mmd_jax.methods import teacher
from mmd_jax.models import build_model

MM_METHODS = ('mm_alternating', 'mm_parameter')
EMD_METHODS = ('diff_instruct', 'emd')
DISTILL_METHODS = MM_METHODS + EMD_METHODS


def denoiser_spec(config, dataset) -> DenoiserSpec:
  num_classes = dataset.num_classes if config.model.conditional else 0
  return DenoiserSpec(
      module=build_model(config.model, num_classes),
      schedule=diffusion.schedule_from_config(config.diffusion),
      parameterization=config.model.parameterization,
      num_classes=num_classes)


def stream_for(config, dataset, batch_size: int, salt: int):
  images = dataset.kind == 'images'
  return batches.BatchStream(dataset.train, batch_size, config.seed + salt,
                             jax.process_index(), jax.process_count(),
                             random_flip=images and config.data.random_flip,
                             prefetch=images)


def stage_key(config, name: str):
  """Keys depend on the seed and stage name only, not on earlier stages."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed),
                            sum(map(ord, name)))


def _preview_fn(config, dataset, spec, k: int, params_of, label: str,
                logsnr_generator=None):
  def preview(state, path):
    n = config.log.num_preview_samples
    labels = (np.arange(n) % spec.num_classes).astype(np.int32) \
        if spec.num_classes else None
    shape = (n,) + dataset.example_shape
    if logsnr_generator is None:
      draw = lambda p, key: spec.sample(p, key, shape, k, labels=labels)
    else:
      draw = lambda p, key: emd.generator_sample(spec, p, key, shape,
                                                 logsnr_generator, labels)
    x = jax.jit(draw)(params_of(state), jax.random.PRNGKey(0))
    real = dataset.train['x'][:2000] if dataset.kind == 'points' else None
    plots.save_samples(np.asarray(x), path,
                       f'{label}, {k} steps, step {int(state.step)}', real=real)
  return preview


# ----------------------------------------------------------------------------
# Teacher.


def teacher_stage(config, workdir: str, dataset, spec,
                  stage_dir: str | None = None) -> train.Stage:
  t = config.teacher
  tx, _ = teacher.make_optimizer(t.learning_rate, t.warmup_steps,
                                 t.num_train_steps, t.grad_clip, t.b1, t.b2,
                                 t.adam_eps, t.lr_decay)
  hp = teacher.TeacherHParams(loss_weight=t.loss_weight,
                              label_dropout=t.label_dropout,
                              ema_decay=t.ema_decay, sigma_data=t.sigma_data,
                              stratified_t=t.stratified_t,
                              grad_accum_steps=config.grad_accum_steps)

  def init(key, batch, frozen):
    del frozen
    return teacher.init(key, spec, hp, tx, batch)

  meta = {'method': 'teacher', 'k': None, 'dataset': dataset.name,
          'example_shape': list(dataset.example_shape),
          'num_classes': spec.num_classes}
  return train.Stage(
      name='teacher', stage_dir=stage_dir or os.path.join(workdir, 'teacher'),
      num_steps=t.num_train_steps, init=init, step=teacher.step,
      rng=lambda s: s.rng, meta=meta,
      preview=_preview_fn(config, dataset, spec, 64, teacher.sampling_params,
                          'teacher'))


def teacher_dir(config, workdir: str) -> str:
  """The teacher stage: config.teacher.checkpoint when it is a stage
  directory, else W/teacher (trained there, or imported from a file)."""
  ckpt = config.teacher.checkpoint
  if ckpt and not ckpt.endswith(teacher_io.PARAM_FILE_SUFFIXES):
    return ckpt
  return os.path.join(workdir, 'teacher')


def import_teacher(config, workdir: str, dataset, spec, mesh):
  """Materialises a parameter file (config.teacher.checkpoint) as W/teacher:
  a checkpoint at the teacher's final step, with the file's params as both
  params and EMA and a fresh optimiser (so Algorithm 3 estimates Lambda)."""
  path = os.path.abspath(config.teacher.checkpoint)
  stage = teacher_stage(config, workdir, dataset, spec)
  meta_path = os.path.join(stage.stage_dir, 'stage.json')
  if os.path.exists(meta_path):
    import json
    with open(meta_path) as f:
      old = json.load(f)
    if old.get('imported_from') == path and train.is_finished(
        stage.stage_dir, stage.num_steps):
      return
    from mmd_jax.config_check import ConfigError
    raise ConfigError(
        f'config.teacher.checkpoint: {stage.stage_dir} already holds a '
        f"teacher ({old.get('imported_from') or 'trained here'}); use a new "
        'workdir to import one')
  x = jnp.zeros((1,) + tuple(dataset.example_shape))
  abstract = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0), x)
  params = teacher_io.load_params(path, abstract)
  stream = stream_for(config, dataset, config.teacher.batch_size, 0)
  state, shardings = train.build_state(stage, stage_key(config, 'teacher'),
                                       stream, mesh)
  params = jax.device_put(params, shardings.params)
  state = state.replace(params=params,
                        ema_params=jax.tree.map(jnp.copy, params))
  train.save_finished(stage, state, dict(stage.meta, imported_from=path))
  logging.info('teacher imported from %s into %s', path, stage.stage_dir)


def check_teacher_matches(stage_dir: str, dataset, spec):
  """A teacher trained on other data (shape or classes) cannot be read:
  say so in one line instead of an orbax shape error."""
  import json
  path = os.path.join(stage_dir, 'stage.json')
  if not os.path.exists(path):
    from mmd_jax.config_check import ConfigError
    raise ConfigError(f'config.teacher.checkpoint: {stage_dir} holds no '
                      'teacher (no stage.json); train one with stage '
                      "'teacher' or point teacher.checkpoint at one")
  with open(path) as f:
    meta = json.load(f)
  want = (list(dataset.example_shape), spec.num_classes)
  have = (meta.get('example_shape'), meta.get('num_classes'))
  if have != want:
    from mmd_jax.config_check import ConfigError
    raise ConfigError(
        f'config.teacher.checkpoint: the teacher in {stage_dir} was trained '
        f"on {meta.get('dataset')} (example shape {have[0]}, {have[1]} "
        f'classes); this run has {dataset.name} (example shape {want[0]}, '
        f'{want[1]} classes)')


def load_teacher(config, workdir, dataset, spec, mesh, step=None):
  stage = teacher_stage(config, workdir, dataset, spec,
                        stage_dir=teacher_dir(config, workdir))
  check_teacher_matches(stage.stage_dir, dataset, spec)
  stream = stream_for(config, dataset, config.teacher.batch_size, 0)
  return train.restore_latest(stage, stream, mesh, stage_key(config, 'teacher'),
                              step)


def estimate_second_moment(spec, params, stream, num_steps: int, b2: float,
                           hp: teacher.TeacherHParams, mesh_sharding):
  """Adam's nu from `num_steps` fresh teacher gradients at fixed params, for
  teachers imported without their optimiser state."""
  @jax.jit
  def acc(nu, batch, key):
    labels = batch.get('label') if spec.num_classes else None
    g = jax.grad(lambda p: teacher.diffusion_loss(
        spec, p, batch['x'], labels, key, hp.loss_weight, hp.sigma_data))(params)
    return jax.tree.map(lambda n, gi: b2 * n + (1 - b2) * gi * gi, nu, g)

  nu = jax.tree.map(jnp.zeros_like, params)
  for i in range(num_steps):
    nu = acc(nu, stream.global_batch_at(i, mesh_sharding),
             jax.random.PRNGKey(i))
  return nu, jnp.asarray(num_steps)


# ----------------------------------------------------------------------------
# Moment matching students.


def mm_hparams(config, k: int) -> mm.MMHParams:
  d = config.distill
  weighting = d.weighting_small_k if k <= 2 else d.weighting
  return mm.MMHParams(k=k, weighting=weighting, renoise=d.renoise,
                      guidance=d.guidance, sigma_data=config.teacher.sigma_data,
                      s_range=d.s_range,
                      grad_accum_steps=config.grad_accum_steps)


def mm_stage(config, workdir: str, dataset, spec, method: str, k: int,
             frozen) -> train.Stage:
  """`frozen` is {'teacher_params': ..., 'precond': ...} (or abstract)."""
  d = config.distill
  tx = mm.mm_optimizer(d.learning_rate, d.warmup_steps, d.num_train_steps,
                       d.grad_clip)
  hp = mm_hparams(config, k)
  if method == 'mm_alternating':
    def init(key, batch, fz):
      return mm.init_alternating(key, fz['teacher_params'], spec, hp, tx, batch)
    step, fields = mm.alternating_step, ('teacher_params',)
    frozen = {'teacher_params': frozen['teacher_params']}
  elif method == 'mm_parameter':
    def init(key, batch, fz):
      return mm.init_parameter(key, fz['teacher_params'], fz['precond'], spec,
                               hp, tx, batch)
    step, fields = mm.parameter_step, ('teacher_params', 'precond')
  else:
    raise ValueError(f'unknown distillation method {method!r}')
  name = f'{method}_k{k}'
  meta = {'method': method, 'k': k, 'dataset': dataset.name,
          'example_shape': list(dataset.example_shape),
          'num_classes': spec.num_classes, 'weighting': hp.weighting,
          'renoise': hp.renoise}
  return train.Stage(
      name=name, stage_dir=os.path.join(workdir, name),
      num_steps=d.num_train_steps, init=init, step=step, rng=lambda s: s.rng,
      meta=meta, frozen=frozen, frozen_fields=fields,
      preview=_preview_fn(config, dataset, spec, k,
                          lambda s: s.student_params, name))


def teacher_frozen(config, teacher_state, spec, dataset, mesh, need_precond):
  """Teacher params (EMA if used) and, for Algorithm 3, Lambda."""
  frozen = {'teacher_params': teacher.sampling_params(teacher_state)}
  if need_precond:
    try:
      nu, count = teacher.adam_second_moment(teacher_state.opt_state)
    except ValueError:
      nu = None
    if nu is None or int(count) == 0:
      n = config.distill.precond_estimate_steps
      logging.info('teacher has no Adam state: estimating Lambda from %d '
                   'fresh teacher gradients', n)
      from mmd_jax import parallel
      nu, count = estimate_second_moment(
          spec, frozen['teacher_params'],
          stream_for(config, dataset, config.teacher.batch_size, 17), n,
          config.teacher.b2, teacher_state.hparams,
          parallel.batch_sharding(mesh))
    frozen['precond'] = mm.preconditioner(nu, count, config.teacher.b2,
                                          config.distill.precond_eps)
  return frozen


def abstract_frozen(spec, dataset, with_precond: bool):
  """Shapes of the frozen inputs, for restoring a student without its teacher."""
  x = jnp.zeros((1,) + dataset.example_shape)
  params = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0), x)
  frozen = {'teacher_params': params}
  if with_precond:
    frozen['precond'] = params
  return frozen


def load_student(config, workdir, dataset, spec, mesh, method: str, k: int,
                 step=None):
  stage = mm_stage(config, workdir, dataset, spec, method, k,
                   abstract_frozen(spec, dataset, method == 'mm_parameter'))
  stream = stream_for(config, dataset, config.distill.batch_size, 1)
  return train.restore_latest(stage, stream, mesh, stage_key(config, stage.name),
                              step)


# ----------------------------------------------------------------------------
# EMD and Diff-Instruct one-step generators.


def emd_stage(config, workdir: str, dataset, spec,
              setting: emd_stages.Setting, frozen) -> train.Stage:
  return emd_stages.emd_stage(config, workdir, dataset, spec, setting, frozen,
                              preview_fn=_preview_fn)


def load_generator(config, workdir, dataset, spec, mesh,
                   setting: emd_stages.Setting, step=None):
  stage = emd_stage(config, workdir, dataset, spec, setting,
                    abstract_frozen(spec, dataset, False))
  stream = stream_for(config, dataset, config.distill.batch_size, 1)
  return train.restore_latest(stage, stream, mesh, stage_key(config, stage.name),
                              step)
