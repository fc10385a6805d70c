"""One existing stage directory on its own (mmd_jax.sample, teacher export,
the fake-score check): its job, bound and restored with the config it was
trained with."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mmd_jax import plugins as registry
from mmd_jax.data import load_dataset
from mmd_jax.run import plan as plan_lib
from mmd_jax.run.jobs import Opened, open_job, restore
from mmd_jax.workdir import fs, stage_meta
from mmd_jax.workdir.stage_meta import WorkdirError


def load_config(path: str):
  """A run's config.json over today's defaults, so keys added since the run
  read their defaults."""
  import ml_collections

  from configs import default
  try:
    stored = json.loads(fs.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f'{path} is damaged ({e}); restore it from a copy, or '
                       'pass --config with the settings the run used') from None
  config = default.get_base_config()
  config.update(stored)
  return ml_collections.ConfigDict(config)


@dataclasses.dataclass
class Stage:
  """An opened, bound and restored stage directory."""
  env: Any
  opened: Opened
  state: Any

  @property
  def ctx(self):
    return self.opened.ctx

  @property
  def bound(self):
    return self.opened.bound


def _method_of(stage_dir: str, meta):
  try:
    return registry.get(meta.get('method', ''))
  except KeyError:
    raise WorkdirError(f'{stage_dir} holds method {meta.get("method")!r}, '
                       f'which this version does not have; known: '
                       f'{registry.names()}') from None


def open_stage(stage_dir: str) -> Stage:
  """The stage directory, restored; a latent run's space comes with it."""
  from mmd_jax.run.runner import Run
  stage_dir = fs.absolute(stage_dir)
  fs.check_reachable(stage_dir)
  meta = stage_meta.read(stage_dir)
  cfg_path = os.path.join(stage_dir, 'config.json')
  if meta is None or not fs.exists(cfg_path):
    raise WorkdirError(f'{stage_dir} is not a stage directory (no '
                       'stage.json/config.json)')
  method = _method_of(stage_dir, meta)
  config = load_config(cfg_path)
  plan = plan_lib.make_plan(config)
  cfg = plan.view_of(method)
  name = os.path.basename(stage_dir)
  job = plan.jobs_by_name.get(name) or method.job_for(cfg, name, meta)
  job = dataclasses.replace(job, stage_dir=stage_dir, source='',
                            source_key='')
  r = Run(config, os.path.dirname(stage_dir), load_dataset(config.data), plan)
  # The jobs before it offer what it needs (shapes, or a latent run's
  # space, restored when asked for); their directories are not checked.
  for planned in plan.jobs:
    if planned.job.name == job.name:
      break
    opened = r.opened[planned.job.name] = open_job(r.env, planned,
                                                   read=False)
    r.bind_abstract(opened)
    r.offer(opened)
  opened = r.open(plan_lib.PlannedJob(method, cfg, job, train=False))
  r.bind_abstract(opened)
  return Stage(r.env, opened, restore(r.env, opened))
