"""Builds the EMD and Diff-Instruct stages, and the EMD ablation sweep.

Every EMD-like stage trains a one-step generator (k = 1):
  diff_instruct_k1         EMD with K = 1, gamma_eps = 1, gamma_z = 0 (baseline)
  emd_k1                   config.emd as shipped
  emd_k1_<slug>            one per entry of config.emd.sweep
"""
from __future__ import annotations

import dataclasses
import os

from mmd_jax import train
from mmd_jax.methods import emd
from mmd_jax.methods.teacher import make_optimizer

# config.emd keys that are EMDHParams fields (the rest configure optimisers).
HPARAM_KEYS = ('langevin_steps', 'parameterization', 'gamma_eps', 'gamma_z',
               'noise_cancellation', 'logsnr_generator', 'weighting', 't_min',
               't_max', 'score_updates')


@dataclasses.dataclass(frozen=True)
class Setting:
  """One EMD run: its stage directory, report model name and overrides."""
  method: str        # 'emd' | 'diff_instruct'
  name: str          # stage directory name
  model: str         # report row's `model`
  overrides: tuple   # ((key, value), ...) applied over config.emd


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


def hparams(config, overrides=()) -> emd.EMDHParams:
  e = config.emd
  kw = {k: e[k] for k in HPARAM_KEYS}
  kw.update(dict(overrides))
  return emd.EMDHParams(**kw, guidance=config.distill.guidance,
                        score_loss_weight=config.teacher.loss_weight,
                        sigma_data=config.teacher.sigma_data,
                        grad_accum_steps=config.grad_accum_steps)


# The settings `describe` names; a sweep entry's other overrides are appended.
DESCRIBED_KEYS = ('langevin_steps', 'parameterization', 'gamma_eps', 'gamma_z',
                  'noise_cancellation')


def describe(hp: emd.EMDHParams) -> str:
  """The setting in a few tokens, e.g. 'K=4,eps,cancel,ge=0.5,gz=0'."""
  return (f'K={hp.langevin_steps},{hp.parameterization},'
          f"{'cancel' if hp.noise_cancellation == 'eps' else 'nocancel'},"
          f'ge={hp.gamma_eps:g},gz={hp.gamma_z:g}')


def settings(config, methods) -> list[Setting]:
  """The EMD-like stages that `methods` (names from config.stages) train."""
  out = []
  if 'diff_instruct' in methods:
    out.append(Setting('diff_instruct', 'diff_instruct_k1', 'diff_instruct',
                       tuple(emd.DIFF_INSTRUCT.items())))
  if 'emd' in methods:
    out.append(Setting('emd', 'emd_k1', 'emd', ()))
    for entry in config.emd.sweep:
      ov = parse_sweep_entry(entry, config.emd)
      desc = describe(hparams(config, ov.items()))
      extra = [f'{k}={v}' for k, v in ov.items() if k not in DESCRIBED_KEYS]
      desc = ','.join([desc] + extra)
      slug = desc.replace('=', '').replace(',', '_')
      out.append(Setting('emd', f'emd_k1_{slug}', f'emd[{desc}]',
                         tuple(ov.items())))
  return out


def optimizers(config):
  """(generator, score) optimisers: Adam with warm-up and linear decay over
  the distill budget, each with its own learning rate."""
  d, e = config.distill, config.emd

  def adam(lr):
    return make_optimizer(lr, d.warmup_steps, d.num_train_steps, d.grad_clip,
                          b1=e.b1, b2=e.b2, eps=1e-8, decay=True)[0]

  return adam(e.generator_learning_rate), adam(e.score_learning_rate)


def emd_stage(config, workdir: str, dataset, spec, setting: Setting,
              frozen, preview_fn=None) -> train.Stage:
  """`frozen` is {'teacher_params': ...} (or abstract)."""
  hp = hparams(config, setting.overrides)
  gen_tx, score_tx = optimizers(config)

  def init(key, batch, fz):
    return emd.init(key, fz['teacher_params'], spec, hp, gen_tx, score_tx,
                    batch)

  meta = {'method': setting.method, 'k': 1, 'model': setting.model,
          'dataset': dataset.name,
          'example_shape': list(dataset.example_shape),
          'num_classes': spec.num_classes,
          'logsnr_generator': hp.logsnr_generator,
          # How the batch is split is not part of the setting.
          'setting': {k: v for k, v in dataclasses.asdict(hp).items()
                      if k != 'grad_accum_steps'}}
  preview = None
  if preview_fn is not None:
    preview = preview_fn(config, dataset, spec, 1,
                         lambda s: s.generator_params, setting.name,
                         logsnr_generator=hp.logsnr_generator)
  return train.Stage(
      name=setting.name, stage_dir=os.path.join(workdir, setting.name),
      num_steps=config.distill.num_train_steps, init=init, step=emd.step,
      rng=lambda s: s.rng, meta=meta,
      frozen={'teacher_params': frozen['teacher_params']},
      frozen_fields=('teacher_params',), preview=preview)
