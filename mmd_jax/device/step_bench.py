"""One bound job's step as `mmd_jax.bench` times it: compiled once as the
loop runs it (guarded, state donated), timed one call at a time and back to
back, with the guard's cost as an A/B in the same process."""
from __future__ import annotations

import statistics
import time

from mmd_jax.device.timing import count_flops, median_seconds, memory_bytes


def bench_step(loop, batch, mesh, num_steps: int, warmup: int,
               guard_ab: bool = True) -> dict:
  import jax
  from mmd_jax.device import collectives, parallel
  from mmd_jax.blocks import guard
  from mmd_jax.loop import train
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(loop.init, key, batch, loop.frozen)
  shardings = parallel.state_sharding(mesh, abstract)
  state = jax.jit(loop.init, out_shardings=shardings)(key, batch,
                                                       loop.frozen)
  rep = parallel.replicated(mesh)
  counts = jax.device_put(guard.init_counts(), rep)
  step_key = jax.device_put(jax.random.PRNGKey(1), rep)
  t0 = time.perf_counter()
  compiled = train.jit_step(loop, shardings, mesh).lower(
      state, batch, step_key, counts).compile()
  compile_s = time.perf_counter() - t0
  flops = count_flops(loop.step, jax.eval_shape(lambda s: s, state), batch,
                      step_key)
  box = {'state': state, 'counts': counts}

  def one():
    s, m, c = compiled(box['state'], batch, step_key, box['counts'])
    jax.block_until_ready((s, m))
    box['state'], box['counts'] = s, c

  out = {}
  if guard_ab:
    times, ab = _guard_ab(loop, shardings, mesh, batch, step_key, state,
                          one, num_steps, warmup)
    out.update(ab, guard_compile_overhead=compile_s / ab.pop(
        'unguarded_compile_s') - 1.0)
  else:
    _, times = median_seconds(one, num_steps, warmup)
  t = statistics.median(times)
  if guard_ab:
    out['guard_overhead'] = t / out['unguarded_step_time_s'] - 1.0
  # Back to back, as the loop runs them (dispatch overlaps compute).
  t0 = time.perf_counter()
  for _ in range(num_steps):
    s, m, c = compiled(box['state'], batch, step_key, box['counts'])
    box['state'], box['counts'] = s, c
  jax.block_until_ready(box['state'])
  pipelined = (time.perf_counter() - t0) / num_steps
  return dict(out, step_time_s=t, step_time_pipelined_s=pipelined,
              step_time_min_s=min(times), compile_s=compile_s,
              flops_per_step=flops, achieved_flops=flops / t,
              peak_memory_bytes=memory_bytes(compiled),
              collectives=collectives.count(compiled.as_text()))


def _guard_ab(loop, shardings, mesh, batch, step_key, state, guarded,
              num_steps: int, warmup: int):
  """The guard's cost as an A/B in one process: the same step compiled
  under `guard.disabled()`, on its own copy of the state (both donate
  theirs), timed interleaved with `guarded`. Returns (the guarded step's
  times, {unguarded_step_time_s, unguarded_compile_s})."""
  import jax
  from mmd_jax.blocks import guard
  from mmd_jax.device import parallel
  rep = parallel.replicated(mesh)
  t0 = time.perf_counter()
  with guard.disabled():
    bare = parallel.jit(loop.step, mesh, in_shardings=(
        shardings, parallel.batch_sharding(mesh), rep), out_shardings=(
            shardings, rep), donate_argnums=(0,),
        precision=loop.matmul_precision).lower(state, batch,
                                                step_key).compile()
  compile_s = time.perf_counter() - t0
  box = {'bare': jax.tree.map(jax.numpy.copy, state)}

  def one_bare():
    s, m = bare(box['bare'], batch, step_key)
    jax.block_until_ready((s, m))
    box['bare'] = s

  for _ in range(warmup):
    guarded(), one_bare()
  times, bare_times = [], []
  for _ in range(num_steps):
    for fn, out in ((guarded, times), (one_bare, bare_times)):
      t0 = time.perf_counter()
      fn()
      out.append(time.perf_counter() - t0)
  return times, {'unguarded_step_time_s': statistics.median(bare_times),
                 'unguarded_compile_s': compile_s}
