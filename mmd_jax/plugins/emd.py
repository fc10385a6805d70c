"""One-step generators (methods/emd.py), k = 1:

  diff_instruct_k1   EMD with K = 1, gamma_eps = 1, gamma_z = 0 (the baseline)
  emd_k1             config.emd as shipped
  emd_k1_<setting>   one per entry of config.emd.sweep
"""
from __future__ import annotations

import dataclasses

from mmd_jax.numerics import analytic, diffusion
from mmd_jax.blocks import optim
from mmd_jax.run.checks import (ConfigError, guidance_needs_labels,
                                need, positive_int)
from mmd_jax.data import toy2d, toy2d_text
from mmd_jax.methods import emd
from mmd_jax.plugins import base, register

# config.emd keys that are EMDHParams fields (the rest configure optimisers).
HPARAM_KEYS = ('langevin_steps', 'parameterization', 'gamma_eps', 'gamma_z',
               'noise_cancellation', 'logsnr_generator', 'weighting', 't_min',
               't_max', 'score_updates', 'teacher', 'integrator',
               'fake_score', 'fake_guidance')
# The settings a row's name spells out; a sweep entry's others are appended.
DESCRIBED_KEYS = ('langevin_steps', 'parameterization', 'gamma_eps', 'gamma_z',
                  'noise_cancellation')


def parse_sweep_entry(entry: str, defaults) -> dict:
  """'langevin_steps=4,gamma_eps=0.5' -> {'langevin_steps': 4, ...}, typed
  like config.emd's defaults. Raises ValueError naming the bad part."""
  out = {}
  for part in filter(None, (p.strip() for p in entry.split(','))):
    key, sep, value = part.partition('=')
    key = key.strip()
    if not sep or key not in HPARAM_KEYS:
      raise ValueError(f'bad sweep item {part!r}; expected KEY=VALUE with KEY '
                       f'in {HPARAM_KEYS}')
    kind = type(defaults[key])
    try:
      out[key] = kind(value.strip())
    except ValueError as e:
      raise ValueError(f'bad sweep value {part!r}: {e}') from None
  return out


def hparams(cfg, overrides=(), mixture=None) -> emd.EMDHParams:
  """`mixture` (the data's, for emd.teacher='analytic') is given where the
  step is built; settings and names do not depend on it."""
  e = cfg.emd
  kw = {k: e[k] for k in HPARAM_KEYS}
  kw.update(dict(overrides))
  if kw['teacher'] == 'analytic' and mixture is not None:
    kw['mixture'] = mixture
  return emd.EMDHParams(**kw, guidance=cfg.distill.guidance,
                        score_loss_weight=e.score_loss_weight,
                        grad_accum_steps=cfg.grad_accum_steps)


def _mixture_of(data):
  """The exact mixture (analytic.AnalyticMixture) a DataShape or Dataset
  names, conditional on captions for toy2d_text, or None."""
  kind, _, toy = data.name.partition('/')
  if kind == 'toy2d':
    return analytic.AnalyticMixture.of(toy2d.get_mixture(toy))
  if kind == 'toy2d_text':
    cm = toy2d_text.ring8_captioned()
    return analytic.AnalyticMixture.of(cm.mixture, cm.allowed,
                                       toy2d_text.table())
  return None


def describe(hp: emd.EMDHParams) -> str:
  """The setting in a few tokens, e.g. 'K=4,eps,cancel,ge=0.5,gz=0'."""
  return (f'K={hp.langevin_steps},{hp.parameterization},'
          f"{'cancel' if hp.noise_cancellation == 'eps' else 'nocancel'},"
          f'ge={hp.gamma_eps:g},gz={hp.gamma_z:g}')


@dataclasses.dataclass(frozen=True)
class GeneratorSampler:
  """x = g(z): one network evaluation at the fixed log-SNR lambda*."""
  spec: object
  logsnr: float

  def __call__(self, params, key, shape, labels, steps=1,
               sampler='ancestral', guidance=0.0):
    del steps, sampler, guidance
    return emd.generator_sample(self.spec, params, key, shape, self.logsnr,
                                labels)


def _check_setting(v, where):
  """The sampler settings in `v` (config.emd, or a sweep entry's merge)."""
  def key(k):
    return f'emd.{k}' if where == 'emd' else f'{where} ({k})'
  need(isinstance(v['langevin_steps'], int) and v['langevin_steps'] >= 0,
       key('langevin_steps'),
       f"must be an integer >= 0, got {v['langevin_steps']!r}")
  need(v['parameterization'] in emd.PARAMETERIZATIONS, key('parameterization'),
       f"unknown {v['parameterization']!r}; known: {emd.PARAMETERIZATIONS}")
  need(v['noise_cancellation'] in emd.CANCELLATIONS, key('noise_cancellation'),
       f"unknown {v['noise_cancellation']!r}; known: {emd.CANCELLATIONS}")
  need(v['weighting'] in emd.WEIGHTINGS, key('weighting'),
       f"unknown {v['weighting']!r}; known: {emd.WEIGHTINGS}")
  need(0.0 < v['gamma_eps'] <= 1.0, key('gamma_eps'),
       f"must be in (0, 1], got {v['gamma_eps']}")
  need(0.0 <= v['gamma_z'] <= 1.0, key('gamma_z'),
       f"must be in [0, 1], got {v['gamma_z']}")
  need(0.0 < v['t_min'] < v['t_max'] < 1.0, key('t_min'),
       f"need 0 < t_min < t_max < 1, got {v['t_min']}, {v['t_max']}")
  need(isinstance(v['score_updates'], int) and v['score_updates'] >= 1,
       key('score_updates'),
       f"must be an integer >= 1, got {v['score_updates']!r}")
  need(v['teacher'] in emd.TEACHERS, key('teacher'),
       f"unknown {v['teacher']!r}; known: {emd.TEACHERS}")
  need(v['integrator'] in emd.INTEGRATORS, key('integrator'),
       f"unknown {v['integrator']!r}; known: {emd.INTEGRATORS}")
  need(v['fake_score'] in emd.FAKE_SCORES, key('fake_score'),
       f"unknown {v['fake_score']!r}; known: {emd.FAKE_SCORES}")
  need(v['fake_guidance'] >= 0.0, key('fake_guidance'),
       f"must be >= 0, got {v['fake_guidance']}")


def _num_steps(cfg) -> int:
  """The generators' budget: emd.num_train_steps, else distill's."""
  return cfg.emd.get('num_train_steps', 0) or cfg.distill.num_train_steps


class _OneStep(base.Method):
  sections = ('distill', 'emd')
  needs = ('teacher_params', 'teacher_frozen_dtype')
  needs_examples = False   # generator samples, noise and conditions only
  networks = ('generator', 'student_score')

  def validate(self, cfg, data, used=True):
    guidance_needs_labels(cfg, 'distill.guidance', data)
    guidance_needs_labels(cfg, 'emd.fake_guidance', data)
    d, e = cfg.distill, cfg.emd
    for key in ('num_train_steps', 'batch_size'):
      positive_int(cfg, f'distill.{key}')
    need(d.warmup_steps >= 0, 'distill.warmup_steps', 'must be >= 0')
    n = e.get('num_train_steps', 0)
    need(isinstance(n, int) and n >= 0, 'emd.num_train_steps',
         f'must be an integer >= 0 (0: distill.num_train_steps), got {n!r}')
    for k in ('generator_learning_rate', 'score_learning_rate'):
      need(e[k] > 0, f'emd.{k}', f'must be > 0, got {e[k]}')
    need(0.0 <= e.b1 < 1.0 and 0.0 <= e.b2 < 1.0, 'emd.b1',
         'emd.b1 and emd.b2 must be in [0, 1)')
    need(e.score_loss_weight in diffusion.LOSS_WEIGHTS, 'emd.score_loss_weight',
         f'unknown {e.score_loss_weight!r}; known: {diffusion.LOSS_WEIGHTS}')
    _check_setting(e, 'emd')
    analytic_wanted = e.teacher == 'analytic'
    quadrature_wanted = e.fake_score == 'quadrature'
    for i, entry in enumerate(e.sweep):
      try:
        overrides = parse_sweep_entry(entry, e)
      except ValueError as err:
        raise ConfigError(f'config.emd.sweep[{i}]: {err}') from None
      merged = {k: e[k] for k in HPARAM_KEYS}
      merged.update(overrides)
      _check_setting(merged, f'emd.sweep[{i}]')
      analytic_wanted = analytic_wanted or merged['teacher'] == 'analytic'
      quadrature_wanted = (quadrature_wanted
                           or merged['fake_score'] == 'quadrature')
    if not used:
      return
    need(not analytic_wanted or _mixture_of(data) is not None,
         'emd.teacher', "'analytic' needs a toy2d mixture as data (its "
         f'exact denoiser); data is {data.name!r}')
    need(not quadrature_wanted or (_mixture_of(data) is not None
                                   and not data.num_classes
                                   and data.caption_signature is None),
         'emd.fake_score', "'quadrature' needs 2-D unlabelled toy2d data "
         f'(a grid over the 2-D z); data is {data.name!r}')
    n = cfg.grad_accum_steps
    need(d.batch_size % n == 0, 'grad_accum_steps',
         f'{n} does not divide distill.batch_size={d.batch_size}')

  def _job(self, cfg, name: str, model: str, overrides) -> base.Job:
    hp = hparams(cfg, overrides)
    d = cfg.distill
    setting = {k: v for k, v in dataclasses.asdict(hp).items()
               if k not in ('grad_accum_steps', 'mixture')}
    # Keys added since: left out at their defaults, so that directories
    # trained before them still match.
    for k, default in (('teacher', 'network'), ('integrator', 'euler'),
                       ('fake_score', 'network'), ('fake_guidance', 0.0)):
      if setting[k] == default:
        del setting[k]
    # Recorded where they differ from the defaults they were fixed at
    # before, so that a changed rate or budget is refused, not resumed.
    e = cfg.emd
    for k, default in (('generator_learning_rate', 1e-4),
                       ('score_learning_rate', 1e-4), ('num_train_steps', 0)):
      if e.get(k, default) != default:   # older configs lack the key
        setting[k] = e[k]
    return base.Job(
        method=self.name, name=name, model=model, steps=1,
        num_steps=_num_steps(cfg), batch_size=d.batch_size,
        batch_key='distill.batch_size', data_salt=1,
        micro_batches=cfg.grad_accum_steps, setting=setting,
        meta={'logsnr_generator': hp.logsnr_generator},
        options=tuple(overrides),
        # The E-step evaluates the teacher once per Langevin step (the
        # Diff-Instruct path once).
        teacher_evals_per_example=max(hp.langevin_steps, 1) * (
            2.0 if hp.guidance else 1.0))

  def bind(self, job, cfg, ctx, artifacts):
    d, e = cfg.distill, cfg.emd
    hp = hparams(cfg, job.options, _mixture_of(ctx.dataset))
    spec = ctx.spec

    def adam(lr):
      return optim.global_step_adam(lr, d.warmup_steps, _num_steps(cfg),
                                    d.grad_clip, b1=e.b1, b2=e.b2,
                                    eps=1e-8)[0]
    gen_tx = adam(e.generator_learning_rate)
    score_tx = adam(e.score_learning_rate)

    def init(key, batch, frozen):
      return emd.init(key, frozen['teacher_params'], spec, hp, gen_tx,
                      score_tx, batch)
    return base.Bound(
        base.with_frozen_teacher_in(init, artifacts['teacher_frozen_dtype']),
        emd.step, {'teacher_params': artifacts['teacher_params']},
        sampling=base.Sampling(GeneratorSampler(spec, hp.logsnr_generator),
                               steps=1, any_steps=False),
        report_setting={k: job.setting[k] for k in DESCRIBED_KEYS},
        bench_name=self._bench_name(job))

  def _bench_name(self, job):
    return self.name

  def job_for(self, cfg, name, meta):
    # The directory records its whole setting: a sweep member needs no
    # config entry.
    setting = meta.get('setting') or {}
    overrides = tuple((k, setting[k]) for k in HPARAM_KEYS if k in setting)
    return self._job(cfg, name, meta.get('model', self.name), overrides)


class DiffInstruct(_OneStep):
  name = 'diff_instruct'

  def jobs(self, cfg):
    return [self._job(cfg, 'diff_instruct_k1', 'diff_instruct',
                      tuple(emd.DIFF_INSTRUCT.items()))]


class EMD(_OneStep):
  name = 'emd'

  def jobs(self, cfg):
    out = [self._job(cfg, 'emd_k1', 'emd', ())]
    for entry in cfg.emd.sweep:
      ov = parse_sweep_entry(entry, cfg.emd)
      desc = describe(hparams(cfg, ov.items()))
      extra = [f'{k}={v}' for k, v in ov.items() if k not in DESCRIBED_KEYS]
      desc = ','.join([desc] + extra)
      slug = desc.replace('=', '').replace(',', '_')
      out.append(self._job(cfg, f'emd_k1_{slug}', f'emd[{desc}]',
                           tuple(ov.items())))
    return out

  def _bench_name(self, job):
    return f"emd_K{job.setting['langevin_steps']}"


register(DiffInstruct())
register(EMD())
