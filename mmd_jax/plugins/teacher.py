"""The teacher: a many-step diffusion model (methods/teacher.py).

Trained in W/teacher, or imported from `teacher.checkpoint`:
- an mmd_jax teacher stage directory, read where it is;
- a parameter file of config.model's network (param_files.py);
- a diffusers UNet2DModel directory (diffusers_import.py), which also
  becomes the run's network: students and generators are copies of it.
A file or a diffusers model is written into W/teacher as a checkpoint at
the final step, with a fresh optimiser. Publishes 'teacher_params' (the EMA
when used), 'teacher_frozen_dtype' (teacher.frozen_dtype: the dtype students
keep their frozen copy in) and 'teacher_second_moment' (Adam's second
moment; estimated from fresh gradients when the teacher has no Adam state,
as an imported one has not).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from absl import logging

from mmd_jax.models import diffusers_import
from mmd_jax.numerics import diffusion
from mmd_jax.workdir import fs, param_files, stage_meta
from mmd_jax.device import parallel
from mmd_jax.run.checks import need, one_of, positive_int
from mmd_jax.methods import teacher
from mmd_jax.plugins import base, register


def _abstract_params(ctx):
  x = jnp.zeros((1,) + tuple(ctx.dataset.example_shape))
  return jax.eval_shape(ctx.spec.init_params, jax.random.PRNGKey(0), x)


def _check_finished(t):
  """A teacher stage directory must hold a finished teacher, unless
  teacher.allow_unfinished says to take it as it stands."""
  meta = stage_meta.read(t.checkpoint) or {}
  done = meta.get('finished_step')
  if done is not None:
    return
  steps = [int(n) for n in fs.listdir(os.path.join(
      t.checkpoint, 'checkpoints')) if n.isdigit()] if fs.isdir(
          os.path.join(t.checkpoint, 'checkpoints')) else []
  at = f'its latest checkpoint is step {max(steps)}' if steps else (
      'it has no checkpoint')
  need(bool(t.allow_unfinished), 'teacher.checkpoint',
       f'{t.checkpoint} holds a teacher whose training did not finish '
       f'({at}); finish it, or set teacher.allow_unfinished=True to distil '
       'it as it stands')
  logging.warning('teacher.checkpoint %s did not finish training; %s: '
                  'distilling it as it stands (teacher.allow_unfinished)',
                  t.checkpoint, at)


class Teacher(base.Method):
  name = 'teacher'
  sections = ('teacher',)
  provides = ('teacher_params', 'teacher_frozen_dtype',
              'teacher_second_moment')
  networks = ('teacher',)

  def validate(self, cfg, data, used=True):
    t = cfg.teacher
    for key in ('num_train_steps', 'batch_size'):
      positive_int(cfg, f'teacher.{key}')
    need(t.learning_rate > 0, 'teacher.learning_rate',
         f'must be > 0, got {t.learning_rate}')
    need(t.warmup_steps >= 0, 'teacher.warmup_steps', 'must be >= 0')
    need(0.0 <= t.ema_decay < 1.0, 'teacher.ema_decay', 'must be in [0, 1)')
    need(t.loss_weight in diffusion.LOSS_WEIGHTS, 'teacher.loss_weight',
         f'unknown {t.loss_weight!r}; known: {diffusion.LOSS_WEIGHTS}')
    need(0.0 <= t.label_dropout < 1.0, 'teacher.label_dropout',
         'must be in [0, 1)')
    need(t.sigma_data > 0, 'teacher.sigma_data', 'must be > 0')
    one_of(cfg, 'teacher.noise_schedule', diffusers_import.SCHEDULES)
    one_of(cfg, 'teacher.prediction_type',
           ('auto',) + tuple(diffusers_import.PREDICTIONS))
    if not used:
      return
    if t.checkpoint:
      need(fs.exists(t.checkpoint), 'teacher.checkpoint',
           f'{t.checkpoint!r} does not exist')
      need(fs.isdir(t.checkpoint) or t.checkpoint.endswith(
          param_files.PARAM_FILE_SUFFIXES), 'teacher.checkpoint',
           f'{t.checkpoint!r} is neither a teacher stage directory, a '
           'diffusers model directory nor a .npz/.msgpack parameter file')
      if diffusers_import.is_diffusers_dir(t.checkpoint):
        diffusers_import.check(t.checkpoint, t.noise_schedule,
                               t.prediction_type, data)
      elif fs.isdir(t.checkpoint):
        _check_finished(t)
    n = cfg.grad_accum_steps
    need(t.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide teacher.batch_size={t.batch_size}')

  def jobs(self, cfg):
    t = cfg.teacher
    ckpt = fs.absolute(t.checkpoint) if t.checkpoint else ''
    # Read in place: a teacher stage directory. Imported: a file or a
    # diffusers model.
    in_place = fs.isdir(ckpt) and not diffusers_import.is_diffusers_dir(
        ckpt)
    return [base.Job(
        method=self.name, name='teacher', model='teacher', steps=None,
        num_steps=t.num_train_steps, batch_size=t.batch_size,
        batch_key='teacher.batch_size', data_salt=0,
        micro_batches=cfg.grad_accum_steps, source=ckpt,
        source_key='teacher.checkpoint', stage_dir=ckpt if in_place else '')]

  def _diffusers_dir(self, cfg, workdir: str):
    """The diffusers model this run's teacher is: the copy an import left in
    W/teacher, or teacher.checkpoint; None for mmd_jax's own networks."""
    copy = os.path.join(workdir, 'teacher', diffusers_import.COPY_DIR)
    if fs.isfile(os.path.join(copy, "import.json")):
      return copy
    ckpt = cfg.teacher.checkpoint
    return ckpt if ckpt and diffusers_import.is_diffusers_dir(ckpt) else None

  def network(self, cfg, data, workdir):
    src = self._diffusers_dir(cfg, workdir)
    if src is None:
      return None
    t = cfg.teacher
    module, param, conditional, schedule = diffusers_import.network(
        src, t.noise_schedule, t.prediction_type, t.sigma_data)
    return base.Network(module, param, conditional, schedule,
                        null_label=diffusers_import.has_null_label(
                            src, data.num_classes))

  def _hparams(self, cfg):
    t = cfg.teacher
    return teacher.TeacherHParams(
        loss_weight=t.loss_weight, label_dropout=t.label_dropout,
        ema_decay=t.ema_decay, stratified_t=t.stratified_t,
        grad_accum_steps=cfg.grad_accum_steps)

  def bind(self, job, cfg, ctx, artifacts):
    t = cfg.teacher
    tx, _ = teacher.make_optimizer(t.learning_rate, t.warmup_steps,
                                   t.num_train_steps, t.grad_clip, t.b1, t.b2,
                                   t.adam_eps, t.lr_decay)
    hp, spec = self._hparams(cfg), ctx.spec
    estimator = _Estimator(functools.partial(self._estimate, cfg, ctx))

    def publish(state):
      try:
        nu, count = teacher.adam_second_moment(state.opt_state)
      except ValueError:   # no Adam state: estimated on first use
        nu, count = jax.tree.map(jnp.zeros_like, state.sampling_params), 0
      return {'teacher_params': state.sampling_params,
              'teacher_frozen_dtype': t.frozen_dtype,
              'teacher_second_moment': SecondMoment(nu, count, estimator,
                                                    t.b2)}

    return base.Bound(
        init=lambda key, batch, frozen: teacher.init(key, spec, hp, tx, batch),
        step=teacher.step,
        sampling=base.Sampling(base.SpecSampler(spec), steps=None),
        publish=publish,
        load=(functools.partial(self._load, job, cfg, ctx) if job.source
              and not job.stage_dir else None))

  def _load(self, job, cfg, ctx, state):
    if fs.isdir(job.source):   # a diffusers model
      params = diffusers_import.load_params(job.source)
      t = cfg.teacher
      if jax.process_index() == 0:
        diffusers_import.keep_copy(job.source,
                                   os.path.join(ctx.workdir, job.name),
                                   t.noise_schedule, t.prediction_type)
    else:
      params = param_files.load_params(job.source, _abstract_params(ctx))
    params = jax.tree.map(lambda p, old: jax.device_put(p, old.sharding),
                          params, state.params)
    logging.info('teacher imported from %s', job.source)
    return state.replace(params=params,
                         ema_params=jax.tree.map(jnp.copy, params))

  def _estimate(self, cfg, ctx, params, n: int):
    logging.info('teacher has no Adam state: estimating its second moment '
                 'from %d fresh teacher gradients', n)
    stream = ctx.stream(ctx.dataset, cfg.teacher.batch_size, 17)
    sharding = parallel.batch_sharding(ctx.mesh)
    update = jax.jit(functools.partial(teacher.second_moment_update, ctx.spec,
                                       self._hparams(cfg), b2=cfg.teacher.b2))
    nu = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
      nu = update(params, nu, stream.global_batch_at(i, sharding),
                  jax.random.PRNGKey(i))
    return nu, jnp.asarray(n)


class _Estimator:
  """Fresh-gradient estimates of the second moment, one per (params, n):
  every mm_parameter job of a run shares one."""

  def __init__(self, estimate):
    self._estimate, self._done = estimate, {}

  def __call__(self, params, n: int):
    key = (id(params), n)
    if key not in self._done:
      self._done[key] = (params, self._estimate(params, n))
    return self._done[key][1]


@flax.struct.dataclass
class SecondMoment:
  """The 'teacher_second_moment' artifact: Adam's raw second moment and its
  update count (0: the teacher has none, as an imported one has not)."""
  nu: Any
  count: Any
  estimate: Callable = flax.struct.field(pytree_node=False)
  b2: float = flax.struct.field(pytree_node=False)

  def v_hat(self, params, estimate_steps: int):
    """Adam's bias-corrected v-hat, estimated from `estimate_steps` fresh
    gradients at `params` when the teacher has no Adam state."""
    nu, count = self.nu, self.count
    if int(count) == 0:
      nu, count = self.estimate(params, estimate_steps)
    return teacher.bias_corrected(nu, count, self.b2)


register(Teacher())
