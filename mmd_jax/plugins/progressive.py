"""Progressive distillation (methods/progressive.py): rounds from the
teacher's DDIM at `progressive.start_steps` down to the smallest k of
`distill.sampling_steps`, one directory per round, `progressive_k<k>`.
Each round starts from the previous round's student: it needs the
'<round>/student' artifact of the round before it."""
from __future__ import annotations

import dataclasses

from mmd_jax.blocks import optim
from mmd_jax.run.checks import (guidance_needs_labels, need, positive_int,
                                powers_of, time_powers)
from mmd_jax.methods import progressive as pd
from mmd_jax.plugins import base, register


def rounds(start: int, smallest: int) -> list:
  """The students' step counts, round by round: start/2, start/4, ...,
  smallest."""
  out, k = [], start // 2
  while k >= smallest and k >= 1:
    out.append(k)
    k //= 2
  return out


@dataclasses.dataclass(frozen=True)
class DDIMSampler(base.TimeSpaced):
  """A progressive student samples with deterministic DDIM, as it was
  trained to, on the uniform grid of its training unless
  progressive.time_powers spaces it otherwise (tune_sampler)."""
  spec: object
  time_powers: tuple = ()   # TimeSpaced
  TIME_POWERS_KEY = 'progressive.time_powers'

  def __call__(self, params, key, shape, labels, steps, sampler='ancestral',
               guidance=0.0):
    del sampler, guidance
    return self.spec.sample(params, key, shape, steps, labels=labels,
                            sampler='ddim', time_power=self.power_at(steps))


class Progressive(base.Method):
  name = 'progressive'
  sections = ('distill', 'progressive')
  needs = ('teacher_params', 'teacher_frozen_dtype')
  networks = ('student',)

  def validate(self, cfg, data, used=True):
    guidance_needs_labels(cfg, 'distill.guidance', data)
    d, p = cfg.distill, cfg.progressive
    positive_int(cfg, 'progressive.start_steps')
    positive_int(cfg, 'distill.batch_size')
    positive_int(cfg, 'distill.num_train_steps')
    ks = tuple(d.sampling_steps)
    need(len(ks) > 0, 'distill.sampling_steps', 'is empty')
    need(p.steps_per_round >= 0, 'progressive.steps_per_round',
         'must be >= 0 (0: distill.num_train_steps split over the rounds)')
    need(p.learning_rate > 0, 'progressive.learning_rate', 'must be > 0')
    time_powers(cfg, 'progressive.time_powers', 'distill.sampling_steps')
    if not used:
      return
    reached = rounds(p.start_steps, min(ks))
    for k in ks:
      need(k in reached, 'progressive.start_steps',
           f'{p.start_steps} does not halve to k={k} of '
           f'distill.sampling_steps; use a power of two times every k, '
           'larger than all of them')
    need(self._steps(cfg) >= 1, 'distill.num_train_steps',
         f'{d.num_train_steps} steps do not cover the '
         f'{len(rounds(p.start_steps, 1))} rounds from '
         f'progressive.start_steps={p.start_steps} to one step')
    n = cfg.grad_accum_steps
    need(d.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide distill.batch_size={d.batch_size}')

  def _steps(self, cfg) -> int:
    """Updates per round: the budget split over the rounds down to one
    step, whatever k the run asks for, so that a k-step student costs the
    same in every run (it used to depend on the smallest k asked for: with
    k = 1 on the board the k = 8 student got half the budget it gets
    alone)."""
    p = cfg.progressive
    if p.steps_per_round:
      return p.steps_per_round
    return cfg.distill.num_train_steps // max(len(rounds(p.start_steps, 1)),
                                              1)

  def hparams(self, cfg, k):
    return pd.PDHParams(k=k, guidance=cfg.distill.guidance,
                        grad_accum_steps=cfg.grad_accum_steps)

  def jobs(self, cfg):
    d, p = cfg.distill, cfg.progressive
    out, needs = [], ()
    for k in rounds(p.start_steps, min(d.sampling_steps)):
      name = f'{self.name}_k{k}'
      out.append(base.Job(
          method=self.name, name=name, model=self.name, steps=k,
          num_steps=self._steps(cfg), batch_size=d.batch_size,
          batch_key='distill.batch_size', data_salt=1,
          micro_batches=cfg.grad_accum_steps, needs=needs,
          setting={'k': k, 'teacher_steps': 2 * k,
                   'start_steps': p.start_steps, 'guidance': d.guidance,
                   'learning_rate': p.learning_rate},
          # Two DDIM steps of the round's teacher per example.
          teacher_evals_per_example=4.0 if d.guidance else 2.0))
      needs = (f'{name}/student',)
    return out

  def bind(self, job, cfg, ctx, artifacts):
    p, spec = cfg.progressive, ctx.spec
    hp = self.hparams(cfg, job.steps)
    tx, _ = optim.global_step_adam(p.learning_rate, p.warmup_steps,
                                   job.num_steps, p.grad_clip, b1=0.9,
                                   b2=0.999, eps=1e-8)
    # Round 1 distils the teacher; later rounds the previous student.
    teacher = artifacts[job.needs[0]] if job.needs else artifacts[
        'teacher_params']

    def init(key, batch, frozen):
      return pd.init(key, frozen['teacher_params'], spec, hp, tx, batch)
    return base.Bound(
        base.with_frozen_teacher_in(init, artifacts['teacher_frozen_dtype']),
        pd.step, {'teacher_params': teacher},
        sampling=base.Sampling(
            DDIMSampler(spec, powers_of(cfg, 'progressive.time_powers')),
            steps=job.steps),
        publish=lambda state: {f'{job.name}/student': state.sampling_params})


register(Progressive())
