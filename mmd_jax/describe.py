"""--mode=describe: what a config costs, without data and without training.

Parameter counts come from `jax.eval_shape` of each network's init, and each
stage's FLOPs and memory per step from XLA's cost and memory analysis of
the jitted step, lowered on abstract shapes (`ShapeDtypeStruct`): nothing
the size of the model is allocated, so a 400M-parameter config describes
itself on a laptop. Written to W/describe.json and printed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmd_jax import config_check, emd_stages, parallel, stages
from mmd_jax.data import images as images_lib
from mmd_jax.data import points as points_lib
from mmd_jax.data.points import DataError


@dataclasses.dataclass
class DataShape:
  """The parts of a Dataset that building a stage needs, without the data."""
  name: str
  kind: str
  example_shape: tuple
  num_classes: int


def data_shape(data_cfg) -> DataShape:
  name = data_cfg.name
  if name == 'toy2d':
    return DataShape(f'toy2d/{data_cfg.toy_name}', 'points', (2,), 0)
  if name == 'digits':
    return DataShape('digits', 'digits', (8, 8, 1), 10)
  if name == 'points':
    arr = points_lib.load_points(data_cfg.path)
    return DataShape(f'points/{os.path.basename(data_cfg.path)}', 'points',
                     tuple(arr.shape[1:]), 0)
  if name in images_lib.IMAGE_DATASETS:
    spec = images_lib.IMAGE_DATASETS[name]
    return DataShape(name, 'images', (spec.resolution,) * 2 + (3,),
                     spec.num_classes)
  raise DataError(f'unknown data.name {name!r}')


def _abstract_batch(ds: DataShape, batch: int, mesh):
  sh = parallel.batch_sharding(mesh)
  out = {'x': jax.ShapeDtypeStruct((batch,) + tuple(ds.example_shape),
                                   jnp.float32, sharding=sh)}
  if ds.num_classes:
    out['label'] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sh)
  return out


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _stage_cost(stage, batch, mesh) -> dict:
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(stage.init, key, batch, stage.frozen)
  shardings = parallel.state_sharding(mesh, abstract)
  t0 = time.time()
  compiled = jax.jit(
      stage.step, in_shardings=(shardings, parallel.batch_sharding(mesh),
                                parallel.replicated(mesh)),
      donate_argnums=0).lower(abstract, batch, key).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  out = {'flops_per_step': float(cost.get('flops', float('nan'))),
         'compile_seconds': round(time.time() - t0, 1)}
  if mem is not None:
    parts = {k: int(getattr(mem, f'{k}_size_in_bytes', 0))
             for k in ('argument', 'output', 'alias', 'temp')}
    # Donated state aliases its output, so it is counted once.
    out['memory_bytes'] = (parts['argument'] + parts['output']
                           - parts['alias'] + parts['temp'])
    out['memory_breakdown_bytes'] = parts
  out['flops_per_example'] = out['flops_per_step'] / batch['x'].shape[0]
  return out


def _stages_to_describe(config, ds, spec):
  """(name, stage, global batch) for every training stage of the config,
  with abstract frozen inputs standing in for a trained teacher."""
  out = []
  for name in config.stages:
    if name == 'teacher':
      out.append((name, stages.teacher_stage(config, '/nonexistent', ds, spec),
                  config.teacher.batch_size))
    elif name in stages.MM_METHODS:
      frozen = stages.abstract_frozen(spec, ds, name == 'mm_parameter')
      for k in config.distill.sampling_steps:
        st = stages.mm_stage(config, '/nonexistent', ds, spec, name, k, frozen)
        out.append((st.name, st, config.distill.batch_size))
    elif name in stages.EMD_METHODS:
      frozen = stages.abstract_frozen(spec, ds, False)
      for setting in emd_stages.settings(config, (name,)):
        st = stages.emd_stage(config, '/nonexistent', ds, spec, setting,
                              frozen)
        out.append((st.name, st, config.distill.batch_size))
  return out


def describe(config, workdir: str) -> dict:
  # Describing needs neither data nor Inception weights: validate the
  # training stages only.
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.stages = tuple(s for s in config.stages if s != 'evaluate') or (
        'teacher',)
  config_check.validate(config)
  ds = data_shape(config.data)
  mesh = parallel.make_mesh(config.mesh)
  spec = stages.denoiser_spec(config, ds)
  x = jnp.zeros((1,) + tuple(ds.example_shape))
  n_params = _count(jax.eval_shape(spec.init_params, jax.random.PRNGKey(0), x))
  networks = {'teacher': {'params': n_params}}
  if any(s in stages.MM_METHODS for s in config.stages):
    networks['student'] = {'params': n_params}
  if 'mm_alternating' in config.stages:
    networks['auxiliary'] = {'params': n_params}
  if any(s in stages.EMD_METHODS for s in config.stages):
    networks['generator'] = {'params': n_params}
    networks['student_score'] = {'params': n_params}
  n_dev = mesh.devices.size
  accum = config.grad_accum_steps
  out = {'config': {'data': ds.name, 'model': config.model.name},
         'networks': networks,
         'mesh': dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
         'devices': n_dev, 'backend': jax.default_backend(),
         'global_batch': int(config.teacher.batch_size),
         'distill_global_batch': int(config.distill.batch_size),
         'grad_accum_steps': accum,
         'per_device_batch': {
             'teacher': config.teacher.batch_size // n_dev // accum,
             'distill': config.distill.batch_size // n_dev // accum},
         'note': ('XLA cost analysis counts a loop body once (EMD Langevin '
                  'and score-update scans, micro-batch scans); memory is '
                  'per device'),
         'stages': {}}
  for name, stage, batch_size in _stages_to_describe(config, ds, spec):
    logging.info('describe: compiling %s (batch %d) on abstract shapes', name,
                 batch_size)
    parallel.check_batch(batch_size, mesh, name, accum)
    out['stages'][name] = _stage_cost(
        stage, _abstract_batch(ds, batch_size, mesh), mesh)
    logging.info('describe: %s %s', name, out['stages'][name])
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'describe.json'), 'w') as f:
      json.dump(out, f, indent=2)
  return out


def format_summary(d: dict) -> str:
  lines = [f"networks: " + ', '.join(f"{k} {v['params'] / 1e6:.1f}M params"
                                     for k, v in d['networks'].items()),
           f"mesh {d['mesh']} ({d['devices']} {d['backend']} devices); global "
           f"batch {d['global_batch']} (distill {d['distill_global_batch']}), "
           f"per device {d['per_device_batch']}, grad_accum_steps "
           f"{d['grad_accum_steps']}"]
  for name, s in d['stages'].items():
    mem = s.get('memory_bytes')
    lines.append(
        f"  {name:24s} {s['flops_per_step'] / 1e12:10.2f} TFLOP/step "
        f"{s['flops_per_example'] / 1e9:9.2f} GFLOP/example  "
        + (f'{mem / 2**30:8.2f} GiB/device' if mem is not None else ''))
  return '\n'.join(lines)
