"""Timing and counting helpers shared by the loop, evaluation, the bench
and the layer profile: durations for ETAs, median wall time, the matmul
peak, XLA's FLOPs with loops unrolled, and compiled memory. No flags here,
so every CLI can import it."""
from __future__ import annotations

import statistics
import time

from absl import logging


def fmt_duration(sec: float) -> str:
  """'3m07s' or '1h05m', for ETAs in progress lines."""
  sec = int(sec)
  if sec >= 3600:
    return f'{sec // 3600}h{(sec % 3600) // 60:02d}m'
  return f'{sec // 60}m{sec % 60:02d}s'


def median_seconds(fn, reps: int, warmup: int) -> tuple[float, list]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def matmul_peak(dtype_name: str, sizes=(1024, 2048, 4096),
                budget_s: float = 20.0) -> dict:
  """The best FLOP/s of one square matmul over `sizes`, each timed (median
  of several) after a warm-up: what this machine delivers on the op it does
  best, measured now, in this process."""
  import jax
  import jax.numpy as jnp
  dtype = jnp.dtype(dtype_name)
  best = {'flops_per_s': 0.0}
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    run = lambda: f(a, b).block_until_ready()
    run()
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    reps = max(3, min(50, int(budget_s / len(sizes) / max(once, 1e-6))))
    t, _ = median_seconds(run, reps, 1)
    rate = 2.0 * n ** 3 / t
    logging.info('matmul %s %dx%d: %.3f ms, %.1f GFLOP/s', dtype_name, n, n,
                 t * 1e3, rate / 1e9)
    if rate > best['flops_per_s']:
      best = {'flops_per_s': rate, 'size': n, 'seconds': t}
  return best


def peak_dtype(backend: str) -> str:
  """The dtype a user's model computes in on this backend: bf16 on
  accelerators, f32 on CPU (whose bf16 matmuls are emulated)."""
  return 'float32' if backend == 'cpu' else 'bfloat16'


# ----------------------------------------------------------------------------
# Step functions.


def memory_bytes(compiled) -> int | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  get = lambda k: int(getattr(mem, f'{k}_size_in_bytes', 0))
  # Donated state aliases its output: count it once.
  return get('argument') + get('output') - get('alias') + get('temp')


def count_flops(fn, *args) -> float:
  """XLA's FLOPs for fn(*args) with every scan unrolled, so loop bodies
  count once per iteration. Lowered only (cost analysis of the HLO), never
  run."""
  import jax
  from mmd_jax.device import loops
  with loops.unrolled():
    lowered = jax.jit(fn).lower(*args)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))
