"""Runs `config.stages` in order and writes the report.

A finished stage (its stage.json records the final step) is skipped on a
re-run; an unfinished one resumes from its latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
from absl import logging

from mmd_jax import (config_check, emd_stages, parallel, stages, teacher_io,
                     latent, train, vae_stages)
from mmd_jax.data import load_dataset
from mmd_jax.denoiser import count_params
from mmd_jax.evaluation import evaluate
from mmd_jax.methods import teacher

# Kept importable from here for users' scripts.
denoiser_spec = stages.denoiser_spec
load_teacher = stages.load_teacher
stream_for = stages.stream_for
teacher_stage = stages.teacher_stage


def prepare_workdir(config, workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      tmp = os.path.join(workdir, 'config.json.tmp')
      with open(tmp, 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
      os.replace(tmp, os.path.join(workdir, 'config.json'))
  except OSError as e:
    raise WorkdirError(f'workdir {workdir} is not writable ({e.strerror or e})'
                       ) from None


def _save_stage_config(config, stage_dir):
  os.makedirs(stage_dir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(stage_dir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def _check_same_stage(stage):
  """A stage directory holds one setting: refuse to resume or skip one that
  was trained with different hyperparameters (e.g. a changed EMD default)."""
  path = os.path.join(stage.stage_dir, 'stage.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  for key in ('method', 'k', 'setting', 'weighting', 'renoise'):
    if key in old and key in stage.meta and old[key] != stage.meta[key]:
      raise config_check.ConfigError(
          f'{stage.stage_dir} was trained with {key}={old[key]!r}, the config '
          f'now asks for {stage.meta[key]!r}; use a new workdir or remove it')


def _log_data_shard(stream):
  if jax.process_count() > 1:
    idx = stream.local_indices(0)
    logging.info('data: process %d of %d reads %d of the %d examples of each '
                 'global batch; step 0 rows %s', jax.process_index(),
                 jax.process_count(), len(idx), stream.global_batch,
                 ','.join(map(str, idx[:8])))


def _train_stage(config, stage, stream, mesh):
  _check_same_stage(stage)
  _save_stage_config(config, stage.stage_dir)
  if train.is_finished(stage.stage_dir, stage.num_steps):
    logging.info('%s: finished earlier, skipping', stage.name)
    return None
  return train.run(stage, stream, mesh, stages.stage_key(config, stage.name),
                   config.checkpoint, config.log, config.max_nonfinite_steps)


def run(config, workdir: str):
  config_check.validate(config)
  dataset = load_dataset(config.data)
  mesh = parallel.make_mesh(config.mesh)
  n = config.grad_accum_steps
  parallel.check_batch(config.teacher.batch_size, mesh, 'teacher.batch_size',
                       n)
  if any(s in stages.DISTILL_METHODS for s in config.stages):
    parallel.check_batch(config.distill.batch_size, mesh,
                         'distill.batch_size', n)
  if 'vae' in config.stages:
    parallel.check_batch(config.vae.batch_size, mesh, 'vae.batch_size')
  spec = stages.denoiser_spec(config, dataset)
  latent_run = latent.is_latent(config)
  if (config.teacher.checkpoint and os.path.isdir(config.teacher.checkpoint)
      and not latent_run):
    stages.check_teacher_matches(config.teacher.checkpoint, dataset, spec)
  prepare_workdir(config, workdir)
  logging.info('dataset %s: %d training examples of shape %s', dataset.name,
               dataset.num_train, dataset.example_shape)

  teacher_state = None
  frozen = None
  scorer = []   # one evaluate.Scorer, built on first use, for every stage
  image_ds, space = dataset, None
  for name in config.stages:
    if latent_run and name != 'vae' and space is None:
      # Diffusion stages see the VAE's latents from here on.
      space = latent.load_space(config, workdir, image_ds, mesh)
      dataset = latent.latent_dataset(image_ds, space)
      spec = stages.denoiser_spec(config, dataset)
    if name == 'teacher' and config.teacher.checkpoint:
      # Imported, not trained: a stage directory, or a parameter file that
      # becomes W/teacher.
      if config.teacher.checkpoint.endswith(teacher_io.PARAM_FILE_SUFFIXES):
        stages.import_teacher(config, workdir, dataset, spec, mesh)
        _save_stage_config(config, stages.teacher_dir(config, workdir))
      teacher_state = stages.load_teacher(config, workdir, dataset, spec, mesh)
    elif name == 'teacher':
      stage = stages.teacher_stage(config, workdir, dataset, spec)
      stream = stages.stream_for(config, dataset, config.teacher.batch_size, 0)
      _log_data_shard(stream)
      teacher_state = _train_stage(config, stage, stream, mesh)
      if teacher_state is not None:
        logging.info('teacher: %d parameters',
                     count_params(teacher_state.params))
    elif name == 'vae':
      stream = stages.stream_for(config, image_ds, config.vae.batch_size, 3)
      _train_stage(config, vae_stages.vae_stage(config, workdir, image_ds),
                   stream, mesh)
    elif name in stages.DISTILL_METHODS:
      if teacher_state is None:
        teacher_state = stages.load_teacher(config, workdir, dataset, spec,
                                            mesh)
      if frozen is None or (name == 'mm_parameter' and 'precond' not in frozen):
        frozen = stages.teacher_frozen(config, teacher_state, spec, dataset,
                                       mesh, need_precond=name == 'mm_parameter')
      stream = stages.stream_for(config, dataset, config.distill.batch_size, 1)
      if name in stages.MM_METHODS:
        for k in config.distill.sampling_steps:
          stage = stages.mm_stage(config, workdir, dataset, spec, name, k,
                                  frozen)
          _train_stage(config, _with_quality(
              config, workdir, dataset, spec, stage, k,
              lambda s: s.student_params, None, scorer, image_ds, space),
                       stream, mesh)
      else:
        for setting in emd_stages.settings(config, (name,)):
          stage = stages.emd_stage(config, workdir, dataset, spec, setting,
                                   frozen)
          _train_stage(config, _with_quality(
              config, workdir, dataset, spec, stage, 1,
              lambda s: s.generator_params, stage.meta['logsnr_generator'],
              scorer, image_ds, space), stream, mesh)
    elif name == 'evaluate':
      if teacher_state is None and _needs_teacher(config):
        teacher_state = stages.load_teacher(config, workdir, dataset, spec,
                                            mesh)
      _evaluate(config, workdir, dataset, spec, mesh, teacher_state,
                image_ds=image_ds, space=space)
    else:  # config_check rejects these earlier; kept as a guard.
      raise config_check.ConfigError(f'config.stages: {name!r} not implemented')


def _with_quality(config, workdir, dataset, spec, stage, k, params_of,
                  logsnr_generator, scorer: list, image_ds=None, space=None):
  """The stage, scored every eval.every_steps steps on eval.num_samples
  samples (the paper's FID-50k every 5k steps)."""
  if not config.eval.every_steps:
    return stage

  def quality(state):
    if not scorer:
      scorer.append(evaluate.Scorer(config, image_ds or dataset, workdir))
    samples, labels = evaluate.generate(
        spec, params_of(state), jax.random.PRNGKey(config.eval.seed),
        config.eval.num_samples, k, 'ancestral', config.eval.batch_size,
        dataset.example_shape, spec.num_classes, 0.0, logsnr_generator,
        quantize=dataset.kind == 'images')
    if space is not None:
      samples = space.decode(samples)
    return scorer[0].score(samples, labels)

  return dataclasses.replace(stage, quality=quality,
                             quality_every=config.eval.every_steps)


class WorkdirError(ValueError):
  """--mode=eval on a workdir that lacks what the config names."""


def _needs_teacher(config) -> bool:
  """Evaluation scores a teacher when the run has or names one; a run of
  only the VAE has none."""
  return bool(config.teacher.checkpoint) or any(
      s == 'teacher' or s in stages.DISTILL_METHODS for s in config.stages)


def _evaluate(config, workdir, dataset, spec, mesh, teacher_state,
              step=None, image_ds=None, space=None):
  """`dataset`/`spec` are what the diffusion stages trained on (latents in
  a latent run); `image_ds` is the data scored against."""
  image_ds = image_ds or dataset
  entries = [evaluate.Entry('teacher', s, k, spec,
                            teacher.sampling_params(teacher_state))
             for s in config.eval.samplers for k in config.eval.teacher_steps
             ] if teacher_state is not None else []
  entries += _student_entries(config, workdir, dataset, spec, mesh, step)
  rows, images = [], {}
  if 'vae' in config.stages:
    rows, images = vae_stages.evaluate_rows(config, workdir, image_ds, mesh,
                                            step)
  rep = evaluate.run(config, workdir, image_ds, entries, rows, images,
                     sample_shape=dataset.example_shape if space else None,
                     decode=space.decode if space else None)
  logging.info('report written to %s', os.path.join(workdir, 'report.md'))
  _log_summary(rep)
  return rep


def evaluate_workdir(config, workdir: str, step: int | None = None):
  """--mode=eval: scores the checkpoints of every stage in config.stages that
  `workdir` holds (the latest, or `step`), trains nothing, rewrites the
  report. The teacher comes from W/teacher or config.teacher.checkpoint."""
  config_check.validate(config)
  if not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} does not exist')
  dataset = load_dataset(config.data)
  mesh = parallel.make_mesh(config.mesh)
  spec = stages.denoiser_spec(config, dataset)
  missing = [d for d in _stage_dirs(config, workdir)
             if not os.path.isdir(os.path.join(workdir, d))]
  if missing:
    raise WorkdirError(f'{workdir} has no stage {missing[0]!r} (config.stages '
                       f'names it); train it first or drop it from the stages')
  image_ds, space = dataset, None
  try:
    if latent.is_latent(config):
      space = latent.load_space(config, workdir, image_ds, mesh)
      dataset = latent.latent_dataset(image_ds, space)
      spec = stages.denoiser_spec(config, dataset)
    teacher_state = stages.load_teacher(
        config, workdir, dataset, spec, mesh, step) if _needs_teacher(
            config) else None
    return _evaluate(config, workdir, dataset, spec, mesh, teacher_state, step,
                     image_ds=image_ds, space=space)
  except FileNotFoundError as e:
    raise WorkdirError(str(e)) from None


def _stage_dirs(config, workdir):
  dirs = []
  for method in config.stages:
    if method == 'vae':
      dirs.append('vae')
    elif method in stages.MM_METHODS:
      dirs += [f'{method}_k{k}' for k in config.distill.sampling_steps]
    elif method in stages.EMD_METHODS:
      dirs += [s.name for s in emd_stages.settings(config, (method,))]
  return dirs


def _stage_cost(stage_dir):
  path = os.path.join(stage_dir, 'stage.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get('seconds_per_step')


def _student_entries(config, workdir, dataset, spec, mesh, step=None):
  """One report entry per trained student and generator, in stage order."""
  entries = []
  for method in config.stages:
    if method in stages.MM_METHODS:
      for k in config.distill.sampling_steps:
        _check_same_stage(stages.mm_stage(
            config, workdir, dataset, spec, method, k,
            stages.abstract_frozen(spec, dataset, method == 'mm_parameter')))
        st = stages.load_student(config, workdir, dataset, spec, mesh, method,
                                 k, step)
        entries.append(evaluate.Entry(
            method, 'student', k, spec, st.student_params,
            train_seconds_per_step=_stage_cost(
                os.path.join(workdir, f'{method}_k{k}'))))
    elif method in stages.EMD_METHODS:
      for setting in emd_stages.settings(config, (method,)):
        # Score what the directory holds, not what the config now says.
        _check_same_stage(stages.emd_stage(
            config, workdir, dataset, spec, setting,
            stages.abstract_frozen(spec, dataset, False)))
        st = stages.load_generator(config, workdir, dataset, spec, mesh,
                                   setting, step)
        hp = emd_stages.hparams(config, setting.overrides)
        entries.append(evaluate.Entry(
            setting.model, 'student', 1, spec, st.generator_params,
            logsnr_generator=hp.logsnr_generator,
            train_seconds_per_step=_stage_cost(
                os.path.join(workdir, setting.name)),
            setting={'langevin_steps': hp.langevin_steps,
                     'parameterization': hp.parameterization,
                     'noise_cancellation': hp.noise_cancellation,
                     'gamma_eps': hp.gamma_eps, 'gamma_z': hp.gamma_z}))
  return entries


def _log_summary(rep):
  logging.info('reference (real vs real): %s', json.dumps(rep['reference']))
  for r in rep['rows']:
    logging.info('%-24s %-9s k=%-4d %s', r['model'], r['sampler'], r['steps'],
                 json.dumps({k: round(v, 5) for k, v in r['metrics'].items()}))
