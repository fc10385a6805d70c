"""Runs `config.stages` in order and writes the report.

A finished stage (its stage.json records the final step) is skipped on a
re-run; an unfinished one resumes from its latest checkpoint.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from mmd_jax import config_check, diffusion, parallel, train
from mmd_jax.data import batches, load_dataset
from mmd_jax.denoiser import DenoiserSpec, count_params
from mmd_jax.evaluation import evaluate, plots
from mmd_jax.methods import teacher
from mmd_jax.models import build_model


def denoiser_spec(config, dataset) -> DenoiserSpec:
  num_classes = dataset.num_classes if config.model.conditional else 0
  return DenoiserSpec(
      module=build_model(config.model, num_classes),
      schedule=diffusion.schedule_from_config(config.diffusion),
      parameterization=config.model.parameterization,
      num_classes=num_classes)


def teacher_stage(config, workdir: str, dataset, spec) -> train.Stage:
  t = config.teacher
  tx, _ = teacher.make_optimizer(t.learning_rate, t.warmup_steps,
                                 t.num_train_steps, t.grad_clip, t.b1, t.b2,
                                 t.adam_eps, t.lr_decay)
  hp = teacher.TeacherHParams(loss_weight=t.loss_weight,
                              label_dropout=t.label_dropout,
                              ema_decay=t.ema_decay, sigma_data=t.sigma_data,
                              stratified_t=t.stratified_t)

  def init(key, batch):
    return teacher.init(key, spec, hp, tx, batch)

  def preview(state, path):
    n = config.log.num_preview_samples
    labels = (np.arange(n) % spec.num_classes).astype(np.int32) \
        if spec.num_classes else None
    x = jax.jit(lambda p, k: spec.sample(
        p, k, (n,) + dataset.example_shape, 64, labels=labels))(
            teacher.sampling_params(state), jax.random.PRNGKey(0))
    real = dataset.train['x'][:2000] if dataset.kind == 'points' else None
    plots.save_samples(np.asarray(x), path,
                       f'teacher, 64 ancestral steps, step {int(state.step)}',
                       real=real)

  meta = {'method': 'teacher', 'k': None, 'dataset': dataset.name,
          'example_shape': list(dataset.example_shape),
          'num_classes': spec.num_classes}
  return train.Stage(name='teacher', stage_dir=os.path.join(workdir, 'teacher'),
                     num_steps=t.num_train_steps, init=init, step=teacher.step,
                     rng=lambda s: s.rng, meta=meta, preview=preview)


def stream_for(config, dataset, batch_size: int, salt: int):
  return batches.BatchStream(dataset.train, batch_size, config.seed + salt,
                             jax.process_index(), jax.process_count())


def _stage_key(config, name: str):
  # Stage keys are derived from the seed and stage name only, so that they do
  # not depend on which stages ran before.
  return jax.random.fold_in(jax.random.PRNGKey(config.seed),
                            sum(map(ord, name)))


def load_teacher(config, workdir, dataset, spec, mesh):
  """The teacher state from this workdir's teacher stage."""
  stage = teacher_stage(config, workdir, dataset, spec)
  stream = stream_for(config, dataset, config.teacher.batch_size, 0)
  return train.restore_latest(stage, stream, mesh, _stage_key(config, 'teacher'))


def prepare_workdir(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def run(config, workdir: str):
  config_check.validate(config)
  dataset = load_dataset(config.data)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch(config.teacher.batch_size, mesh, 'teacher.batch_size')
  spec = denoiser_spec(config, dataset)
  prepare_workdir(config, workdir)
  logging.info('dataset %s: %d training examples of shape %s', dataset.name,
               dataset.num_train, dataset.example_shape)

  teacher_state = None
  for name in config.stages:
    if name == 'teacher':
      stage = teacher_stage(config, workdir, dataset, spec)
      _save_stage_config(config, stage.stage_dir)
      if train.is_finished(stage.stage_dir, stage.num_steps):
        logging.info('teacher: finished earlier, skipping')
        continue
      stream = stream_for(config, dataset, config.teacher.batch_size, 0)
      state = train.run(stage, stream, mesh, _stage_key(config, 'teacher'),
                        config.checkpoint, config.log)
      logging.info('teacher: %d parameters', count_params(state.params))
      teacher_state = state
    elif name == 'evaluate':
      if teacher_state is None:
        teacher_state = load_teacher(config, workdir, dataset, spec, mesh)
      settings = [(s, k) for s in config.eval.samplers
                  for k in config.eval.teacher_steps]
      models = {'teacher': (spec, teacher.sampling_params(teacher_state),
                            settings)}
      rep = evaluate.run(config, workdir, dataset, models)
      logging.info('report written to %s', os.path.join(workdir, 'report.md'))
      _log_summary(rep)
    else:  # config_check rejects these earlier; kept as a guard.
      raise config_check.ConfigError(f'config.stages: {name!r} not implemented')


def _save_stage_config(config, stage_dir):
  os.makedirs(stage_dir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(stage_dir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def _log_summary(rep):
  logging.info('reference (real vs real): %s', json.dumps(rep['reference']))
  for r in rep['rows']:
    logging.info('%-16s %-9s k=%-4d %s', r['model'], r['sampler'], r['steps'],
                 json.dumps({k: round(v, 5) for k, v in r['metrics'].items()}))
