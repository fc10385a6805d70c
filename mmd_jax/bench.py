"""Speed and efficiency: `python -m mmd_jax.bench --config=configs/NAME.py[:ARG]
--output=F.json`.

For each registered method's step function (every method marked `benched`,
i.e. the teacher and the distillation methods; `--only` picks others), on
one global batch and one model so that their costs compare:
  - the median wall time of a step, over `--num_steps` timed steps after
    compile and `--warmup_steps`; each timed step is waited for, so this is
    the step's latency, not the loop's throughput;
  - XLA's FLOPs per step, counted on a program whose scans are unrolled
    (XLA counts a loop body once; EMD's Langevin chain is a loop);
  - achieved FLOP/s, and MFU: achieved / the matmul FLOP/s this run
    measured on the same devices (the machine's practical peak);
  - peak memory per device (compiled memory analysis).
And sampling throughput through each method's own sampler, the one
evaluation uses: a many-step model (the teacher) at `--teacher_steps`, each
student at each of its k, a one-step generator once.

The networks are freshly initialised (each provider's placeholder
artifacts stand in for trained ones): step cost does not depend on the
parameter values.
Batches are synthetic device arrays of the data's shape, so data loading is
not timed; the training loop prefetches it.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the JSON.')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 20, 'Timed steps per step '
                                  'function (the median is reported).')
_WARMUP = flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps after '
                               'compiling.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Global batch for every step '
                              'function (0: config.teacher.batch_size).')
_ONLY = flags.DEFINE_list('only', [], 'Bench only these: method names (as in '
                          'config.stages) and/or sampling.')
_SAMPLE_BATCH = flags.DEFINE_integer('sample_batch_size', 0, 'Samples per '
                                     'call (0: config.eval.batch_size).')
_TEACHER_K = flags.DEFINE_list('teacher_steps', ['8', '256'],
                               'Teacher sampling step counts to time.')
_MATMUL = flags.DEFINE_list('matmul_sizes', ['1024', '2048', '4096'],
                            'Square matmul sizes for the peak (the best '
                            'counts).')
_GUARD_AB = flags.DEFINE_bool('guard_ab', True, 'Also time each step '
                              'without the non-finite guard (guard_overhead).')
_MATMUL_DTYPE = flags.DEFINE_string(
    'matmul_dtype', '', 'dtype of the matmul peak that MFU divides by '
    '(default: bfloat16 on accelerators, float32 on CPU).')
flags.mark_flags_as_required(['config', 'output'])

# count_flops is public here too: tests and users reach it as bench.count_flops.
from mmd_jax.device.step_bench import bench_step  # noqa: E402
from mmd_jax.device.timing import (  # noqa: E402,F401
    count_flops, matmul_peak, median_seconds, memory_bytes, peak_dtype)


def _selected(only):
  """The methods to bench, providers (those that need nothing) first."""
  from mmd_jax import plugins as registry
  from mmd_jax.run.checks import ConfigError
  named = [n for n in only if n != 'sampling']
  unknown = sorted(set(named) - set(registry.names()))
  if unknown:
    raise ConfigError(f'--only: unknown {unknown}; known: '
                      f'{registry.names() + ("sampling",)}')
  methods = [registry.get(n) for n in named] if named else [
      m for m in registry.methods() if m.benched]
  return sorted(methods, key=lambda m: bool(m.needs))


def synthetic_batch(ds, batch_size: int, mesh):
  import jax
  import numpy as np
  from mmd_jax.device import parallel
  rng = np.random.default_rng(0)
  out = {'x': rng.standard_normal((batch_size,) + tuple(ds.example_shape),
                                  dtype=np.float32).clip(-1, 1)}
  if ds.num_classes:
    out['label'] = rng.integers(0, ds.num_classes, batch_size).astype(
        np.int32)
  if ds.caption_signature is not None:
    out['cond'] = jax.tree.map(np.asarray,
                               ds.caption_signature.zeros(batch_size))
  return jax.device_put(out, parallel.batch_sharding(mesh))


# ----------------------------------------------------------------------------
# Sampling.


def bench_sampling(env, opened, params, sample_batch: int,
                   teacher_steps) -> dict:
  """Samples/s of every bound job in `opened` that samples."""
  import jax
  from mmd_jax.evaluation import evaluate
  ctx = env.context(_AnyMethod)
  shape = tuple(ctx.dataset.example_shape)
  if ctx.spec.num_classes:
    import jax.numpy as jnp
    labels = jnp.arange(sample_batch, dtype=jnp.int32) % ctx.spec.num_classes
  else:   # a caption of the right shapes, or None
    labels = ctx.spec.example_cond(sample_batch)
  runs = {}
  for o in opened:
    sampling = o.bound.sampling
    if sampling is None:
      continue
    guidance = env.config.eval.guidance if sampling.steps is None else 0.0
    for k in ([sampling.steps] if sampling.steps else teacher_steps):
      runs.setdefault(f'{o.method.name}_k{k}', (sampling.draw, k, guidance))
  out = {}
  for name, (draw, k, guidance) in runs.items():
    fn = evaluate.draw_fn(draw, k, 'ancestral', (sample_batch,) + shape,
                          guidance)
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    fn(params, key, labels).block_until_ready()
    compile_s = time.perf_counter() - t0
    once = time.perf_counter()
    fn(params, key, labels).block_until_ready()
    once = time.perf_counter() - once
    reps = max(3, min(20, int(10.0 / max(once, 1e-6))))
    t, _ = median_seconds(
        lambda: fn(params, key, labels).block_until_ready(), reps, 0)
    out[name] = {'samples_per_s': sample_batch / t, 'steps': k,
                 'seconds_per_call': t, 'batch': sample_batch,
                 'compile_s': compile_s}
    logging.info('sampling %-22s %10.1f samples/s', name, sample_batch / t)
  return out


# ----------------------------------------------------------------------------


def run(config, num_steps: int = 20, warmup: int = 3, batch_size: int = 0,
        only=(), sample_batch: int = 0, teacher_steps=(8, 256),
        matmul_sizes=(1024, 2048, 4096), guard_ab: bool = True,
        matmul_dtype: str = '') -> dict:
  from mmd_jax.run.artifacts import placeholders
  from mmd_jax.run.jobs import abstract_jobs, bind, loop_of, needs_of

  config, reduced = _for_backend(config)
  methods = _selected(only)
  env, batch_size = _env(config, methods, batch_size)
  out, params = _header(config, env, batch_size, reduced, matmul_dtype,
                        matmul_sizes)
  batch = synthetic_batch(env.data, batch_size, env.mesh)
  jobs, shapes = abstract_jobs(env, config, methods)
  peak, root = out['peak_matmul'], None
  for m in methods:
    # The job with the most sampling steps: step cost does not depend on k.
    opened = max((o for o in jobs.values() if o.method is m),
                 key=lambda o: o.job.steps or 0)
    bound = bind(opened, placeholders({a: shapes[a]
                                       for a in needs_of(opened.planned)}))
    name = bound.bench_name or m.name
    logging.info('bench: %s', name)
    r = bench_step(loop_of(env, opened), batch, env.mesh, num_steps, warmup,
                   guard_ab)
    r['mfu'] = r['achieved_flops'] / peak['flops_per_s']
    out['steps'][name] = r
    root = root or (name if not m.needs else None)
    logging.info('bench: %s %.2f ms/step, %.1f GFLOP/s, MFU %.1f%%%s', name,
                 r['step_time_s'] * 1e3, r['achieved_flops'] / 1e9,
                 100 * r['mfu'], '' if 'guard_overhead' not in r else
                 ', guard %+.1f%% of the step (%+.0f%% compile)' % (
                     100 * r['guard_overhead'],
                     100 * r['guard_compile_overhead']))
  if root is not None:   # the teacher: what every other step is measured in
    t = out['steps'][root]['step_time_s']
    for r in out['steps'].values():
      r['relative_to_teacher'] = r['step_time_s'] / t
  if not only or 'sampling' in only:
    out['sampling'] = bench_sampling(
        env, [o for o in jobs.values() if o.method in methods], params,
        sample_batch or config.eval.batch_size, teacher_steps)
  return out


def _for_backend(config):
  """(the config without `evaluate`, with the config's tiny stand-in for
  CPU where it has one (device_check), whether it was reduced)."""
  import jax
  from mmd_jax.run import config_check, plan
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.stages = tuple(s for s in config.stages if s != plan.EVALUATE) or (
        config.stages)
    reduced = bool(jax.default_backend() == 'cpu' and
                   config.get('bench', {}).get('cpu'))
    if reduced:
      config.update({k: v for k, v in config.bench.cpu.items()
                     if k != 'bench'})
  config_check.validate(config)
  return config, reduced


def _env(config, methods, batch_size: int):
  """(the run's Env on the data's shapes, the batch: by default the first
  method's, the teacher's)."""
  from mmd_jax.data import data_shape
  from mmd_jax.device import parallel
  from mmd_jax.run import plan
  from mmd_jax.run.env import Env
  ds = data_shape(config.data)
  plan.validate_methods(config, [m.name for m in methods], ds)
  mesh = parallel.make_mesh(config.mesh)
  env = Env(config, '/nonexistent', mesh, ds)
  batch_size = batch_size or methods[0].jobs(plan.view(
      config, methods[0]))[0].batch_size
  parallel.check_batch(batch_size, mesh, '--batch_size',
                       config.grad_accum_steps)
  return env, batch_size


def _header(config, env, batch_size, reduced, matmul_dtype, matmul_sizes):
  """(the result's header and empty `steps`, the teacher network's
  parameters)."""
  import jax
  import jax.numpy as jnp
  ds, mesh = env.data, env.mesh
  backend = jax.default_backend()
  dtype = matmul_dtype or peak_dtype(backend)
  logging.info('bench: %s on %d %s devices (%s), batch %d', ds.name,
               mesh.devices.size, backend, jax.devices()[0].device_kind,
               batch_size)
  peak = matmul_peak(dtype, tuple(matmul_sizes))
  params = jax.jit(env.context(_AnyMethod).spec.init_params)(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(ds.example_shape)))
  out = {'peak_matmul_flops': peak['flops_per_s'],
         'peak_matmul': dict(peak, dtype=dtype),
         'device': {'backend': backend, 'kind': jax.devices()[0].device_kind,
                    'count': mesh.devices.size,
                    'mesh': dict(zip(mesh.axis_names,
                                     map(int, mesh.devices.shape)))},
         'config': {'data': ds.name, 'model': config.model.name,
                    'params': int(sum(x.size for x in jax.tree.leaves(params))),
                    'batch_size': batch_size, 'dtype': config.model.dtype,
                    'grad_accum_steps': config.grad_accum_steps,
                    'reduced_for_cpu': reduced},
         'steps': {}}
  return out, params


class _AnyMethod:
  """Any method trained in the run's space: the network it sees."""
  in_space = True


def format_table(r: dict) -> str:
  lines = [f"{r['config']['data']} / {r['config']['model']} "
           f"({r['config']['params'] / 1e6:.2f}M params), batch "
           f"{r['config']['batch_size']}, {r['device']['count']} "
           f"{r['device']['kind']} device(s); matmul peak "
           f"{r['peak_matmul_flops'] / 1e9:.1f} GFLOP/s "
           f"({r['peak_matmul']['dtype']})",
           f"{'step':16s} {'ms/step':>9s} {'x teacher':>9s} {'GFLOP/step':>11s}"
           f" {'GFLOP/s':>9s} {'MFU':>6s} {'peak MiB':>9s} {'guard':>6s}"]
  for name, s in r['steps'].items():
    mem = s.get('peak_memory_bytes')
    lines.append(
        f"{name:16s} {s['step_time_s'] * 1e3:9.2f} "
        f"{s.get('relative_to_teacher', float('nan')):9.2f} "
        f"{s['flops_per_step'] / 1e9:11.3f} {s['achieved_flops'] / 1e9:9.1f} "
        f"{100 * s['mfu']:5.1f}% "
        + (f'{mem / 2**20:9.1f}' if mem is not None else f"{'-':>9s}")
        + (f" {100 * s['guard_overhead']:+5.1f}%" if 'guard_overhead' in s
           else f"{'-':>7s}"))
  if r.get('sampling'):
    lines.append(f"{'sampler':22s} {'samples/s':>11s}")
    for name, s in r['sampling'].items():
      lines.append(f"{name:22s} {s['samples_per_s']:11.1f}")
  return '\n'.join(lines)


def settings(config, backend: str, given=None) -> dict:
  """run()'s keyword arguments: a flag given on the command line wins,
  then the config's `bench` section (its `cpu` part on CPU), then the
  flag's default."""
  f = flags.FLAGS
  names = {'num_steps': 'num_steps', 'warmup_steps': 'warmup',
           'batch_size': 'batch_size', 'only': 'only',
           'sample_batch_size': 'sample_batch', 'teacher_steps':
           'teacher_steps', 'matmul_sizes': 'matmul_sizes',
           'guard_ab': 'guard_ab', 'matmul_dtype': 'matmul_dtype'}
  given = {n for n in names if n in f and f[n].present} if given is None \
      else set(given)
  section = dict(config.get('bench') or {})
  cpu = section.pop('cpu', None)
  if backend == 'cpu' and cpu is not None:
    section.update(dict(cpu.get('bench') or {}))
  out = {}
  for flag, arg in names.items():
    value = f[flag].value if flag in f else None
    if flag not in given and flag in section:
      value = section[flag]
    if value is None:
      continue
    if flag in ('teacher_steps', 'matmul_sizes'):
      value = tuple(int(v) for v in value)
    out[arg] = tuple(value) if flag == 'only' else value
  return out


def main(argv):
  del argv
  from mmd_jax.run.cli import quiet_libraries
  quiet_libraries()
  import jax  # after flag parsing
  from mmd_jax.errors import Error
  try:
    result = run(_CONFIG.value,
                 **settings(_CONFIG.value, jax.default_backend()))
  except Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  from mmd_jax.run.cli import write_json
  write_json(_OUTPUT.value, result)
  print(format_table(result))


if __name__ == '__main__':
  from mmd_jax.run.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
