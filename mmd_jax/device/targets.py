"""Accelerator targets for `--mode=describe --config.describe.target=NAME`:
a paper estimate of how a config lands on hardware we do not have.

Per chip: peak dense bf16 matmul FLOP/s, HBM bytes, and the interconnect
bandwidth one chip can drive (bytes/s, one direction), each from the
vendor's public page named beside it. `mesh` is the layout the estimate
assumes (data x fsdp = chips).

The estimate (`estimate`) gives lower bounds, not predictions:
  - compute: the step's FLOPs / (chips x peak), i.e. 100% MFU;
  - communication: the bytes a chip must move per step for the gradient
    reduction and the FSDP gathers (ring algorithms: an all-reduce of B
    bytes over n chips moves 2 (n-1)/n B per chip, a reduce-scatter or an
    all-gather (n-1)/n B) / the interconnect bandwidth;
  - memory per chip: the state (trained parameters, EMA, optimiser moments,
    frozen teacher) sharded as `parallel.leaf_sharding` would, plus what
    the step holds unsharded (each network's gathered parameters and the
    trained ones' gradients), plus activations scaled from the compiled
    program to the per-chip micro-batch.
The larger time bound is the dominant one.
"""
from __future__ import annotations

import dataclasses

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  chips: int
  peak_bf16_flops: float        # per chip, dense
  hbm_bytes: float              # per chip
  interconnect_bytes_s: float   # per chip, one direction
  mesh: dict                    # {'data': d, 'fsdp': f}, d * f = chips
  note: str = ''


TARGETS = {t.name: t for t in (
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2, ICI
    # 1,600 Gbps per chip; a v5e-256 pod slice.
    Target('tpu_v5e_256', 256, 197e12, 16 * GB, 1600e9 / 8,
           {'data': 32, 'fsdp': 8}, 'TPU v5e pod slice (256 chips)'),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e, ICI
    # 4,800 Gbps per chip; a v5p-128 slice: 128 TensorCores, 64 chips.
    Target('tpu_v5p_128', 64, 459e12, 95 * GB, 4800e9 / 8,
           {'data': 64, 'fsdp': 1}, 'TPU v5p-128 slice (64 chips)'),
    # nvidia.com/en-us/data-center/h100 (SXM): 989 TFLOP/s dense bf16
    # (1,979 with sparsity), 80 GB HBM3, NVLink 900 GB/s per GPU (both
    # directions, 450 GB/s each way); one 8-GPU node.
    Target('h100x8', 8, 989e12, 80 * GB, 450 * GB,
           {'data': 8, 'fsdp': 1}, '8x H100 SXM node (NVLink)'),
)}


def get(name: str) -> Target:
  if name not in TARGETS:
    from mmd_jax.run.checks import ConfigError
    raise ConfigError(f'config.describe.target: unknown {name!r}; known: '
                      f'{tuple(TARGETS)}')
  return TARGETS[name]


def _ring(kind: str, nbytes: float, n: int) -> float:
  if n <= 1:
    return 0.0
  return (2.0 if kind == 'all-reduce' else 1.0) * (n - 1) / n * nbytes


def estimate(target: Target, *, flops_per_step: float, trained_bytes: float,
             state_bytes: float, gathered_bytes: float,
             activation_bytes_per_row: float, global_batch: int,
             micro_batches: int, steps: int) -> dict:
  """Bounds for one stage on `target` (see the module docstring):
  `trained_bytes` the trained parameters (= their gradients), `state_bytes`
  the whole state, `gathered_bytes` what the step gathers (every parameter
  set it reads), `activation_bytes_per_row` the compiled program's
  temporaries per micro-batch row."""
  d, f = target.mesh['data'], target.mesh['fsdp']
  per_chip_batch = global_batch / target.chips / micro_batches
  t_flops = flops_per_step / (target.chips * target.peak_bf16_flops)
  # Gradients of the trained networks: reduce-scatter over fsdp, then
  # all-reduce of the shard over data; parameters gathered once per step.
  comm = (_ring('reduce-scatter', trained_bytes, f)
          + _ring('all-reduce', trained_bytes / f, d)
          + _ring('all-gather', gathered_bytes, f))
  t_comm = comm / target.interconnect_bytes_s
  fixed = state_bytes / f + gathered_bytes + trained_bytes
  memory = fixed + activation_bytes_per_row * per_chip_batch
  # The fewest more micro-batches (grad_accum_steps x this) that fit; the
  # gradient reduction stays once per step, so the bounds do not change.
  more = next((n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)
               if per_chip_batch / n >= 1 and fixed
               + activation_bytes_per_row * per_chip_batch / n
               <= target.hbm_bytes), None)
  bound = max(t_flops, t_comm)
  return {
      'target': target.name, 'chips': target.chips, 'mesh': target.mesh,
      'per_chip_batch': per_chip_batch,
      'flops_bound_s': t_flops, 'comm_bytes_per_chip': comm,
      'comm_bound_s': t_comm,
      'dominant': 'compute' if t_flops >= t_comm else 'communication',
      'memory_per_chip_bytes': memory,
      'fits': memory <= target.hbm_bytes,
      'grad_accum_factor_to_fit': more,
      'hbm_bytes': target.hbm_bytes,
      'steps': steps, 'days_at_bound': bound * steps / 86400.0}
