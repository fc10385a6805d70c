"""What a stage directory records in stage.json, and the checks that
compare it with the config: a directory holds one setting, and an imported
one must hold what the run expects."""
from __future__ import annotations

import json
import os

import jax

from mmd_jax.errors import Error
from mmd_jax.workdir import fs
from mmd_jax.run.checks import ConfigError


class WorkdirError(Error, ValueError):
  """The workdir lacks (or holds a damaged copy of) what the run needs."""


def read(stage_dir: str):
  path = os.path.join(stage_dir, 'stage.json')
  if not fs.exists(path):
    return None
  try:
    return json.loads(fs.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f'{path} is damaged ({e}); restore it or remove the '
                       'directory') from None


def build(planned, ctx) -> dict:
  """stage.json of a planned job: what it is, the data it trains on, and
  its setting."""
  job = planned.job
  meta = {'method': job.method, 'k': job.steps, 'model': job.model,
          'dataset': ctx.dataset.name,
          'example_shape': list(ctx.dataset.example_shape),
          'num_classes': ctx.dataset.num_classes if not planned.method.in_space
          else ctx.spec.num_classes}
  if job.setting is not None:
    meta['setting'] = job.setting
  if planned.method.networks:
    meta['network'] = describe_network(ctx.spec.module)
  meta.update(job.meta)
  return meta


def describe_network(module) -> dict:
  """What stage.json records of the network: its class and its settings
  (a Flax module's fields), which decide its parameters' shapes."""
  import dataclasses
  out = {'class': type(module).__name__}
  for f in dataclasses.fields(module):
    v = getattr(module, f.name)
    if f.name in ('parent', 'name'):
      continue
    if dataclasses.is_dataclass(v) and not hasattr(v, 'apply'):
      v = dataclasses.asdict(v)   # a config record, e.g. a port's
    if isinstance(v, (bool, int, float, str, tuple, list, dict, type(None))):
      out[f.name] = v
  return json.loads(json.dumps(out, default=str))


def check_same(stage_dir: str, meta: dict, old, key_name: str = ''):
  """A directory holds one setting: refuse to resume, skip or score one
  trained with other hyperparameters (`old`: its stage.json, or None).
  Settings compare on the keys both record, so a field added or dropped
  since does not refuse old runs."""
  if old is None:
    return
  where = f'config.{key_name}: ' if key_name else ''
  diffs = [(k, old[k], meta[k]) for k in ('method', 'k', 'example_shape',
                                          'num_classes')
           if k in old and k in meta and old[k] != meta[k]]
  for section in ('setting', 'network'):
    was, now = old.get(section), meta.get(section)
    if isinstance(was, dict) and isinstance(now, dict):
      prefix = '' if section == 'setting' else 'network.'
      diffs += [(prefix + k, was[k], now[k]) for k in now
                if k in was and was[k] != now[k]]
  diffs += [(k, old[k], v) for k, v in meta.items()
            if k not in ('method', 'k', 'setting', 'network', 'model',
                         'dataset', 'example_shape', 'num_classes')
            and k in old and old[k] != v]
  if diffs:
    raise ConfigError(
        f'{where}{stage_dir} was trained with '
        + ', '.join(f'{k}={was!r}' for k, was, _ in diffs)
        + '; the config now asks for '
        + ', '.join(f'{k}={now!r}' for k, _, now in diffs)
        + '; use the config it was trained with (its config.json), a new '
        'workdir, or remove it')


def check_source(job, meta: dict, old):
  """An imported stage directory (`old`: its stage.json, or None) must hold
  this method's results, trained on data of this run's shape."""
  key = job.source_key
  if old is None:
    raise ConfigError(
        f'config.{key}: {job.stage_dir} holds no {job.model} (no stage.json); '
        f'train one with stage {job.method!r} or point {key} at one')
  have = old.get('example_shape'), old.get('num_classes', meta['num_classes'])
  want = meta['example_shape'], meta['num_classes']
  if tuple(have) != tuple(want):
    raise ConfigError(
        f'config.{key}: the {job.model} in {job.stage_dir} was trained on '
        f"{old.get('dataset')} (example shape {have[0]}, {have[1]} classes); "
        f"this run has {meta['dataset']} (example shape {want[0]}, {want[1]} "
        'classes)')
  check_same(job.stage_dir, meta, old, key)


def save_config(config, stage_dir: str):
  fs.makedirs(stage_dir)
  if jax.process_index() == 0:
    fs.write_text(os.path.join(stage_dir, 'config.json'),
                  config.to_json_best_effort(indent=2))
