"""Consistency distillation (methods/consistency.py): one consistency model,
`consistency_k<smallest k>`, scored with k-step multistep consistency
sampling at every k of `distill.sampling_steps`. Its training does not
depend on k, so one model trained on a student's budget gives every row
(each row costs what one moment-matching student costs), and the rows of
one trained model differ by the sampler alone: training noise and the
multistep sampler are told apart (config.train_seeds copies the model)."""
from __future__ import annotations

import dataclasses

from mmd_jax.blocks import optim
from mmd_jax.run.checks import (guidance_needs_labels, need, positive_int,
                                powers_of, time_powers)
from mmd_jax.methods import consistency as cd
from mmd_jax.plugins import base, register


@dataclasses.dataclass(frozen=True)
class ConsistencySampler(base.TimeSpaced):
  spec: object
  hp: cd.CDHParams
  time_powers: tuple = ()   # TimeSpaced: the multistep time points
  TIME_POWERS_KEY = 'consistency.time_powers'

  def __call__(self, params, key, shape, labels, steps, sampler='ancestral',
               guidance=0.0):
    del sampler, guidance
    return cd.sample(self.spec, self.hp, params, key, shape, steps, labels,
                     self.power_at(steps))


class Consistency(base.Method):
  name = 'consistency'
  sections = ('distill', 'consistency')
  needs = ('teacher_params', 'teacher_frozen_dtype')
  networks = ('student', 'target')

  def validate(self, cfg, data, used=True):
    guidance_needs_labels(cfg, 'distill.guidance', data)
    d, c = cfg.distill, cfg.consistency
    need(len(d.sampling_steps) > 0, 'distill.sampling_steps', 'is empty')
    for key in ('num_train_steps', 'batch_size'):
      positive_int(cfg, f'distill.{key}')
    need(isinstance(c.num_points, int) and c.num_points >= 2,
         'consistency.num_points', f'must be an integer >= 2, got '
         f'{c.num_points!r}')
    for key in ('ema_decay', 'sample_ema_decay'):
      need(0.0 <= c[key] < 1.0, f'consistency.{key}',
           f'must be in [0, 1), got {c[key]}')
    need(c.solver in cd.SOLVERS, 'consistency.solver',
         f'unknown {c.solver!r}; known: {cd.SOLVERS}')
    need(c.huber_c > 0, 'consistency.huber_c', 'must be > 0')
    need(0 < c.sigma_min < c.sigma_max, 'consistency.sigma_min',
         f'must be in (0, consistency.sigma_max), got {c.sigma_min}')
    need(c.learning_rate > 0, 'consistency.learning_rate', 'must be > 0')
    time_powers(cfg, 'consistency.time_powers', 'distill.sampling_steps')
    if not used:
      return
    n = cfg.grad_accum_steps
    need(d.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide distill.batch_size={d.batch_size}')

  def hparams(self, cfg):
    c = cfg.consistency
    return cd.CDHParams(num_points=c.num_points, ema_decay=c.ema_decay,
                        solver=c.solver, huber_c=c.huber_c,
                        sigma_min=c.sigma_min, sigma_max=c.sigma_max,
                        guidance=cfg.distill.guidance,
                        grad_accum_steps=cfg.grad_accum_steps,
                        sample_ema_decay=c.sample_ema_decay)

  def jobs(self, cfg):
    d, hp = cfg.distill, self.hparams(cfg)
    setting = {k: v for k, v in dataclasses.asdict(hp).items()
               if k != 'grad_accum_steps'}
    setting['learning_rate'] = cfg.consistency.learning_rate
    evals = (2.0 if hp.solver == 'heun' else 1.0) * (2.0 if hp.guidance
                                                      else 1.0)
    k = min(d.sampling_steps)
    return [base.Job(
        method=self.name, name=f'{self.name}_k{k}', model=self.name, steps=k,
        num_steps=d.num_train_steps, batch_size=d.batch_size,
        batch_key='distill.batch_size', data_salt=1,
        micro_batches=cfg.grad_accum_steps, setting=setting,
        teacher_evals_per_example=evals)]

  def bind(self, job, cfg, ctx, artifacts):
    c, spec, hp = cfg.consistency, ctx.spec, self.hparams(cfg)
    # [paper]: Adam at a constant rate (RAdam/Adam, no decay) after warm-up.
    tx, _ = optim.make_optimizer(c.learning_rate, c.warmup_steps,
                                 job.num_steps, c.grad_clip, b1=0.9,
                                 b2=0.999, eps=1e-8, decay=False)

    def init(key, batch, frozen):
      return cd.init(key, frozen['teacher_params'], spec, hp, tx, batch)
    return base.Bound(
        base.with_frozen_teacher_in(init, artifacts['teacher_frozen_dtype']),
        cd.step, {'teacher_params': artifacts['teacher_params']},
        sampling=base.Sampling(
            ConsistencySampler(spec, hp,
                               powers_of(cfg, 'consistency.time_powers')),
            steps=job.steps,
            report_steps=tuple(sorted(set(cfg.distill.sampling_steps)))))


register(Consistency())
