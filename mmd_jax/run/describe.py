"""--mode=describe: what a config costs, without data and without training.

Parameter counts come from `jax.eval_shape` of each network's init, and each
stage's FLOPs and memory per step from XLA's cost and memory analysis of
the jitted step, lowered on abstract shapes (`ShapeDtypeStruct`): nothing
the size of the model is allocated, so a 400M-parameter config describes
itself on a laptop. Written to W/describe.json and printed.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from mmd_jax.data import DataShape, data_shape
from mmd_jax.device import collectives, parallel, targets, timing
from mmd_jax.run import config_check, runner
from mmd_jax.run.checks import describing
from mmd_jax.run.jobs import abstract_batch, loop_of
from mmd_jax.run.plan import EVALUATE
from mmd_jax.workdir import fs

# Kept importable from here.
__all__ = ['DataShape', 'data_shape', 'describe', 'format_summary']


def _stage_cost(loop, batch, mesh) -> dict:
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(loop.init, key, batch, loop.frozen)
  shardings = parallel.state_sharding(mesh, abstract)
  t0 = time.time()
  compiled = parallel.jit(
      loop.step, mesh, in_shardings=(shardings,
                                      parallel.batch_sharding(mesh),
                                      parallel.replicated(mesh)),
      out_shardings=None, donate_argnums=0,
      precision=loop.matmul_precision).lower(abstract, batch, key).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  out = {'flops_per_step': float(cost.get('flops', float('nan'))),
         'compile_seconds': round(time.time() - t0, 1),
         'collectives': collectives.count(compiled.as_text())}
  if mem is not None:
    parts = {k: int(getattr(mem, f'{k}_size_in_bytes', 0))
             for k in ('argument', 'output', 'alias', 'temp')}
    # Donated state aliases its output, so it is counted once.
    out['memory_bytes'] = (parts['argument'] + parts['output']
                           - parts['alias'] + parts['temp'])
    out['memory_breakdown_bytes'] = parts
  out['flops_per_example'] = out['flops_per_step'] / batch['x'].shape[0]
  return out


def _float_bytes(tree) -> float:
  return float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
                   if jnp.issubdtype(x.dtype, jnp.inexact)))


def _on_targets(chosen, loop, method, networks, cost, batch, job) -> dict:
  """targets.estimate for one stage on each chosen target: FLOPs counted
  once, with every scan unrolled (Langevin chains, micro-batches), sizes
  from the abstract state, activations from this compile's temporaries
  per row."""
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(loop.init, key, batch, loop.frozen)
  frozen = {f: getattr(abstract, f) for f in loop.frozen_fields}
  trained = 4.0 * sum(networks[n]['params'] for n in method.networks
                      if n in networks)
  rows = cost['per_device_batch']
  temp = cost.get('memory_breakdown_bytes', {}).get('temp', 0)
  sizes = dict(
      flops_per_step=timing.count_flops(loop.step, abstract, batch, key),
      trained_bytes=trained, state_bytes=_float_bytes(abstract),
      gathered_bytes=_float_bytes(frozen) + trained,
      activation_bytes_per_row=temp / max(rows, 1),
      global_batch=job.batch_size, micro_batches=job.micro_batches,
      steps=job.num_steps)
  return {t.name: targets.estimate(t, **sizes) for t in chosen}


def _forward_cost(env, opened, chosen) -> dict:
  """FLOPs, memory and per-target bounds of one forward of the run's
  denoiser (the teacher's network) at the first trained stage's batch."""
  spec, mesh, n = opened.ctx.spec, env.mesh, opened.job.batch_size
  batch = abstract_batch(opened.ctx.dataset, n, mesh)
  params = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct(batch['x'].shape, jnp.float32))
  lam = jax.ShapeDtypeStruct((n,), jnp.float32)
  cond = spec.cond_of(batch)
  fn = lambda p, z, l, c: spec.module.apply(p, z, l, c)
  compiled = jax.jit(fn).lower(params, batch['x'], lam, cond).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) \
      else cost
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, 'temp_size_in_bytes', 0)) if mem else 0
  flops = float(cost.get('flops', float('nan')))
  out = {'global_batch': int(n), 'flops_per_step': flops,
         'flops_per_example': flops / n, 'params_bytes': _float_bytes(params)}
  if chosen:
    out['targets'] = {t.name: targets.estimate(
        t, flops_per_step=flops, trained_bytes=0.0,
        state_bytes=out['params_bytes'], gathered_bytes=out['params_bytes'],
        activation_bytes_per_row=temp / max(n // mesh.devices.size, 1),
        global_batch=n, micro_batches=1, steps=1) for t in chosen}
  return out


def describe(config, workdir: str) -> dict:
  # Describing needs neither data nor Inception weights: validate the
  # training stages only.
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.stages = tuple(s for s in config.stages if s != EVALUATE) or (
        config.stages)
  with describing():   # shapes will do: a weightless model dir, prompts
    plan = config_check.validate(config)
  fs.check_reachable(workdir)
  r = runner.Run(config, workdir, data_shape(config.data), plan,
                 abstract=True)
  env, mesh = r.env, r.env.mesh
  networks = {}
  for planned in plan.jobs:   # in order: a latent run's space comes first
    opened = r.open(planned)
    r.bind_abstract(opened)
    r.offer(opened)
    networks.update({k: {'params': v} for k, v in planned.method.network_sizes(
        planned.cfg, opened.ctx).items()})
  trained = [r.opened[p.job.name] for p in plan.jobs if p.train]
  out = _summary(config, env, networks, trained)
  chosen = [targets.get(n.strip()) for n in
            config.describe.target.split(',') if n.strip()]
  if trained:   # what one forward of the denoiser costs, at the stage batch
    out['teacher_forward'] = _forward_cost(env, trained[0], chosen)
  for opened in trained:
    job = opened.job
    out['stages'][job.name] = _job_cost(env, opened, networks, chosen)
  if jax.process_index() == 0:
    fs.makedirs(workdir)
    fs.write_text(os.path.join(workdir, 'describe.json'),
                  json.dumps(out, indent=2))
  return out


def _summary(config, env, networks, trained) -> dict:
  mesh = env.mesh
  return {'config': {'data': env.data.name, 'model': config.model.name},
          'networks': networks,
          'mesh': dict(zip(mesh.axis_names,
                           (int(s) for s in mesh.devices.shape))),
          'devices': mesh.devices.size, 'backend': jax.default_backend(),
          'global_batch': int(trained[0].job.batch_size) if trained else 0,
          'grad_accum_steps': config.grad_accum_steps,
          'note': ('XLA cost analysis counts a loop body once (EMD Langevin '
                   'and score-update scans, micro-batch scans); memory is '
                   'per device'),
          'stages': {}}


def _job_cost(env, opened, networks, chosen) -> dict:
  job, mesh = opened.job, env.mesh
  logging.info('describe: compiling %s (batch %d) on abstract shapes',
               job.name, job.batch_size)
  parallel.check_batch(job.batch_size, mesh, job.batch_key,
                       job.micro_batches)
  loop = loop_of(env, opened)
  batch = abstract_batch(opened.ctx.dataset, job.batch_size, mesh)
  cost = _stage_cost(loop, batch, mesh)
  cost.update(global_batch=int(job.batch_size),
              per_device_batch=job.batch_size // mesh.devices.size
              // job.micro_batches)
  if chosen:
    cost['targets'] = _on_targets(chosen, loop, opened.method, networks, cost,
                                  batch, job)
  logging.info('describe: %s %s', job.name, cost)
  return cost


def format_summary(d: dict) -> str:
  lines = [f"networks: " + ', '.join(f"{k} {v['params'] / 1e6:.1f}M params"
                                     for k, v in d['networks'].items()),
           f"mesh {d['mesh']} ({d['devices']} {d['backend']} devices); "
           f"grad_accum_steps {d['grad_accum_steps']}"]
  f = d.get('teacher_forward')
  if f:
    lines.append(f"  {'teacher forward':24s} batch {f['global_batch']:6d} "
                 f"{f['flops_per_step'] / 1e12:10.2f} TFLOP/step "
                 f"{f['flops_per_example'] / 1e9:9.2f} GFLOP/example")
    for t in f.get('targets', {}).values():
      lines.append(' ' * 28 + f"on {t['target']}: "
                   f"{t['memory_per_chip_bytes'] / 2**30:.1f} GiB/chip, >= "
                   f"{t['flops_bound_s'] * 1e3:.1f} ms per batch compute")
  for name, s in d['stages'].items():
    mem = s.get('memory_bytes')
    lines.append(
        f"  {name:24s} batch {s['global_batch']:6d} "
        f"({s['per_device_batch']}/device) "
        f"{s['flops_per_step'] / 1e12:10.2f} TFLOP/step "
        f"{s['flops_per_example'] / 1e9:9.2f} GFLOP/example  "
        + (f'{mem / 2**30:8.2f} GiB/device' if mem is not None else ''))
    if 'collectives' in s:
      lines.append(' ' * 28 + 'collectives: '
                   + collectives.format_counts(s['collectives']))
    for t in s.get('targets', {}).values():
      lines.append(
          ' ' * 28 + f"on {t['target']} {t['mesh']}: {t['per_chip_batch']:g}"
          f"/chip, {t['memory_per_chip_bytes'] / 2**30:.1f} GiB/chip "
          f"({'fits' if t['fits'] else 'DOES NOT FIT'} in "
          f"{t['hbm_bytes'] / 2**30:.0f}"
          + (f"; fits with {t['grad_accum_factor_to_fit']}x the "
             'micro-batches' if not t['fits'] and t['grad_accum_factor_to_fit']
             else '') + f"); >= {t['flops_bound_s'] * 1e3:.1f}"
          f" ms/step compute, >= {t['comm_bound_s'] * 1e3:.1f} ms/step "
          f"communication ({t['dominant']} bound); {t['steps']} steps >= "
          f"{t['days_at_bound']:.2f} days")
  return '\n'.join(lines)
