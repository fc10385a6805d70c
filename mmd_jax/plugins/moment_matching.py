"""Moment-matching students (methods/moment_matching.py): `mm_alternating`
(Algorithm 2) and `mm_parameter` (Algorithm 3), one directory per k of
`distill.sampling_steps`: `<method>_k<k>`."""
from __future__ import annotations

import dataclasses

from mmd_jax.run.checks import (guidance_needs_labels, need, one_of,
                                positive_int, powers_of, time_powers)
from mmd_jax.methods import moment_matching as mm
from mmd_jax.plugins import base, register


class _MomentMatching(base.Method):
  sections = ('distill',)
  needs = ('teacher_params', 'teacher_frozen_dtype')

  def validate(self, cfg, data, used=True):
    guidance_needs_labels(cfg, 'distill.guidance', data)
    d = cfg.distill
    need(len(d.sampling_steps) > 0, 'distill.sampling_steps', 'is empty')
    for k in d.sampling_steps:
      need(isinstance(k, int) and k >= 1, 'distill.sampling_steps',
           f'every k must be an integer >= 1, got {k!r}')
    for key in ('num_train_steps', 'batch_size'):
      positive_int(cfg, f'distill.{key}')
    need(d.learning_rate > 0, 'distill.learning_rate',
         f'must be > 0, got {d.learning_rate}')
    need(d.warmup_steps >= 0, 'distill.warmup_steps', 'must be >= 0')
    for key in ('weighting', 'weighting_small_k'):
      one_of(cfg, f'distill.{key}', mm.WEIGHTINGS)
    one_of(cfg, 'distill.renoise', mm.RENOISE)
    one_of(cfg, 'distill.s_range', mm.S_RANGES)
    need(isinstance(d.k1_generator, bool), 'distill.k1_generator',
         f'must be True or False, got {d.k1_generator!r}')
    need(abs(d.k1_logsnr) <= 20, 'distill.k1_logsnr',
         f'must be a log-SNR in [-20, 20], got {d.k1_logsnr}')
    need(isinstance(d.lr_decay, bool), 'distill.lr_decay',
         f'must be True or False, got {d.lr_decay!r}')
    positive_int(cfg, 'distill.aux_updates')
    need(0.0 <= d.student_ema < 1.0, 'distill.student_ema',
         f'must be in [0, 1), got {d.student_ema}')
    time_powers(cfg, self.student_sampler.TIME_POWERS_KEY,
                'distill.sampling_steps')
    if not used:
      return
    n = cfg.grad_accum_steps
    need(d.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide distill.batch_size={d.batch_size}')

  def hparams(self, cfg, k: int) -> mm.MMHParams:
    d = cfg.distill
    return mm.MMHParams(
        k=k, weighting=d.weighting_small_k if k <= 2 else d.weighting,
        renoise=d.renoise, guidance=d.guidance, s_range=d.s_range,
        grad_accum_steps=cfg.grad_accum_steps,
        k1_generator=d.get('k1_generator', False),
        k1_logsnr=d.get('k1_logsnr', 0.0),
        **self._alternating_only(d))

  def _alternating_only(self, d) -> dict:
    return {}

  def jobs(self, cfg):
    d = cfg.distill
    out = []
    for k in d.sampling_steps:
      hp = self.hparams(cfg, k)
      # How the batch is split is not part of the setting.
      setting = {key: v for key, v in dataclasses.asdict(hp).items()
                 if key != 'grad_accum_steps'}
      if k != 1:   # the generator form applies at k = 1 only
        setting = {key: v for key, v in setting.items()
                   if not key.startswith('k1_')}
      else:        # k = 1 always draws s over [0, 1]
        setting.pop('s_range')
      for key in ('aux_updates', 'student_ema'):
        if setting.get(key) == getattr(mm.MMHParams, key):
          setting.pop(key)   # at the default: as directories before them
      optimizer = {'learning_rate': d.learning_rate,
                   'warmup_steps': d.warmup_steps}
      if not d.lr_decay:
        optimizer['lr_decay'] = False
      out.append(base.Job(
          method=self.name, name=f'{self.name}_k{k}', model=self.name,
          steps=k, num_steps=d.num_train_steps, batch_size=d.batch_size,
          batch_key='distill.batch_size', data_salt=1,
          micro_batches=cfg.grad_accum_steps, setting=setting,
          meta={'weighting': hp.weighting, 'renoise': hp.renoise,
                'optimizer': optimizer},
          teacher_evals_per_example=self.teacher_evals(hp)))
    return out

  def _optimizer(self, cfg):
    d = cfg.distill
    return mm.mm_optimizer(d.learning_rate, d.warmup_steps, d.num_train_steps,
                           d.grad_clip, decay=d.lr_decay)

  def _bound(self, job, cfg, ctx, artifacts, init, step, frozen):
    return base.Bound(
        base.with_frozen_teacher_in(init, artifacts['teacher_frozen_dtype']),
        step, frozen, sampling=base.Sampling(
            self.student_sampler(
                ctx.spec, self.hparams(cfg, job.steps),
                powers_of(cfg, self.student_sampler.TIME_POWERS_KEY)),
            steps=job.steps))


@dataclasses.dataclass(frozen=True)
class StudentSampler(base.TimeSpaced):
  """Algorithm 1 (or DDIM) with the student, or at k = 1 in the generator
  form one network call at distill.k1_logsnr. The student trains on jumps
  t - s of up to 1/k drawn anywhere in [0, 1], so another spacing of its k
  steps is a sampler choice that tune_sampler can test, per algorithm
  (the subclasses below name its key); power 1 is the grid of the paper."""
  spec: object
  hp: mm.MMHParams
  time_powers: tuple = ()   # TimeSpaced

  def __call__(self, params, key, shape, labels, steps, sampler='ancestral',
               guidance=0.0):
    del guidance   # students are sampled unguided
    hp = self.hp if steps == self.hp.k else None
    return mm.student_sample(self.spec, params, key, shape, steps, labels, hp,
                             sampler, self.power_at(steps))


@dataclasses.dataclass(frozen=True)
class AlternatingSampler(StudentSampler):
  TIME_POWERS_KEY = 'distill.alternating_time_powers'


@dataclasses.dataclass(frozen=True)
class ParameterSampler(StudentSampler):
  TIME_POWERS_KEY = 'distill.parameter_time_powers'


class Alternating(_MomentMatching):
  name = 'mm_alternating'
  student_sampler = AlternatingSampler
  networks = ('student', 'auxiliary')

  def teacher_evals(self, hp):
    return 2.0 if hp.guidance else 1.0   # the teacher at z_s (CFG: twice)

  def _alternating_only(self, d) -> dict:
    return {'aux_updates': d.aux_updates, 'student_ema': d.student_ema}

  def bind(self, job, cfg, ctx, artifacts):
    hp, tx, spec = self.hparams(cfg, job.steps), self._optimizer(cfg), ctx.spec

    def init(key, batch, frozen):
      return mm.init_alternating(key, frozen['teacher_params'], spec, hp, tx,
                                 batch)
    return self._bound(job, cfg, ctx, artifacts, init, mm.alternating_step,
                       {'teacher_params': artifacts['teacher_params']})


class Parameter(_MomentMatching):
  name = 'mm_parameter'
  student_sampler = ParameterSampler
  needs = ('teacher_params', 'teacher_frozen_dtype', 'teacher_second_moment')
  networks = ('student',)

  def teacher_evals(self, hp):
    # A VJP on batch B, a JVP on batch A: two passes per example (three
    # with CFG, whose guided forward comes on top).
    return 3.0 if hp.guidance else 2.0

  def validate(self, cfg, data, used=True):
    super().validate(cfg, data, used)
    d, n = cfg.distill, cfg.grad_accum_steps
    need(d.precond_eps > 0, 'distill.precond_eps', 'must be > 0')
    positive_int(cfg, 'distill.precond_estimate_steps')
    if not used:
      return
    need(d.batch_size % 2 == 0, 'distill.batch_size',
         'must be even: mm_parameter splits it into batches A and B')
    need(d.batch_size % (2 * n) == 0, 'grad_accum_steps',
         f'{n} does not divide half of distill.batch_size={d.batch_size} '
         '(mm_parameter splits it into batches A and B)')

  def bind(self, job, cfg, ctx, artifacts):
    hp, tx, spec = self.hparams(cfg, job.steps), self._optimizer(cfg), ctx.spec
    d = cfg.distill
    moment, params = (artifacts['teacher_second_moment'],
                      artifacts['teacher_params'])
    # Restored or described: the preconditioner's shapes are the teacher's.
    v_hat = (moment.nu if base.is_abstract(params) else
             moment.v_hat(params, d.precond_estimate_steps))
    precond = base.maybe_abstract(
        lambda v: mm.preconditioner_from_v_hat(v, d.precond_eps), v_hat)

    def init(key, batch, frozen):
      return mm.init_parameter(key, frozen['teacher_params'],
                               frozen['precond'], spec, hp, tx, batch)
    return self._bound(job, cfg, ctx, artifacts, init, mm.parameter_step,
                       {'teacher_params': params, 'precond': precond})


register(Alternating())
register(Parameter())
