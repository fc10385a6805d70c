"""Moment-matching students (methods/moment_matching.py): `mm_alternating`
(Algorithm 2) and `mm_parameter` (Algorithm 3), one directory per k of
`distill.sampling_steps`: `<method>_k<k>`."""
from __future__ import annotations

import dataclasses

from mmd_jax.checks import need, one_of, positive_int
from mmd_jax.methods import moment_matching as mm
from mmd_jax.stages import base, register


class _MomentMatching(base.Method):
  sections = ('distill',)
  needs = ('teacher_params',)

  def validate(self, cfg, data):
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
    n = cfg.grad_accum_steps
    need(d.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide distill.batch_size={d.batch_size}')

  def hparams(self, cfg, k: int) -> mm.MMHParams:
    d = cfg.distill
    return mm.MMHParams(
        k=k, weighting=d.weighting_small_k if k <= 2 else d.weighting,
        renoise=d.renoise, guidance=d.guidance, s_range=d.s_range,
        grad_accum_steps=cfg.grad_accum_steps)

  def jobs(self, cfg):
    d = cfg.distill
    out = []
    for k in d.sampling_steps:
      hp = self.hparams(cfg, k)
      # How the batch is split is not part of the setting.
      setting = {key: v for key, v in dataclasses.asdict(hp).items()
                 if key != 'grad_accum_steps'}
      out.append(base.Job(
          method=self.name, name=f'{self.name}_k{k}', model=self.name,
          steps=k, num_steps=d.num_train_steps, batch_size=d.batch_size,
          batch_key='distill.batch_size', data_salt=1,
          micro_batches=cfg.grad_accum_steps, setting=setting,
          meta={'weighting': hp.weighting, 'renoise': hp.renoise}))
    return out

  def _optimizer(self, cfg):
    d = cfg.distill
    return mm.mm_optimizer(d.learning_rate, d.warmup_steps, d.num_train_steps,
                           d.grad_clip)

  def sampling(self, job, cfg, ctx):
    return base.Sampling(base.SpecSampler(ctx.spec), steps=job.steps)


class Alternating(_MomentMatching):
  name = 'mm_alternating'
  networks = ('student', 'auxiliary')

  def build(self, job, cfg, ctx, artifacts):
    hp, tx, spec = self.hparams(cfg, job.steps), self._optimizer(cfg), ctx.spec

    def init(key, batch, frozen):
      return mm.init_alternating(key, frozen['teacher_params'], spec, hp, tx,
                                 batch)
    return base.Build(init, mm.alternating_step,
                      {'teacher_params': artifacts['teacher_params']})


class Parameter(_MomentMatching):
  name = 'mm_parameter'
  needs = ('teacher_params', 'teacher_second_moment')
  networks = ('student',)

  def validate(self, cfg, data):
    super().validate(cfg, data)
    d, n = cfg.distill, cfg.grad_accum_steps
    need(d.batch_size % 2 == 0, 'distill.batch_size',
         'must be even: mm_parameter splits it into batches A and B')
    need(d.precond_eps > 0, 'distill.precond_eps', 'must be > 0')
    positive_int(cfg, 'distill.precond_estimate_steps')
    need(d.batch_size % (2 * n) == 0, 'grad_accum_steps',
         f'{n} does not divide half of distill.batch_size={d.batch_size} '
         '(mm_parameter splits it into batches A and B)')

  def build(self, job, cfg, ctx, artifacts):
    hp, tx, spec = self.hparams(cfg, job.steps), self._optimizer(cfg), ctx.spec
    d = cfg.distill
    v_hat = artifacts['teacher_second_moment'](d.precond_estimate_steps)
    precond = base.maybe_abstract(
        lambda v: mm.preconditioner_from_v_hat(v, d.precond_eps), v_hat)

    def init(key, batch, frozen):
      return mm.init_parameter(key, frozen['teacher_params'],
                               frozen['precond'], spec, hp, tx, batch)
    return base.Build(init, mm.parameter_step,
                      {'teacher_params': artifacts['teacher_params'],
                       'precond': precond})


register(Alternating())
register(Parameter())
