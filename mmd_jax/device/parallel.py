"""The one place that decides sharding. Step code never names a device."""
from __future__ import annotations

import contextvars
import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmd_jax.errors import Error

AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')


class MeshError(Error, ValueError):
  pass


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry so that the product equals the device count."""
  sizes = [int(mesh_cfg.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise MeshError('mesh: at most one axis may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f'mesh: axis sizes must be positive or -1, got {sizes}')
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f'mesh {dict(zip(AXES, sizes))} does not divide the '
                      f'{num_devices} devices')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f'mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} '
                    f'devices but {num_devices} are present')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Leaves smaller than this stay replicated under FSDP: sharding them saves
# little memory and costs a collective each.
FSDP_MIN_SIZE = 1024


def fsdp_dim(mesh: Mesh, shape) -> int | None:
  """FSDP: the largest dimension that the `fsdp` axis divides is sharded
  over it (parameters, EMA, optimiser moments and gradients alike); small
  leaves, and everything when fsdp = 1, are replicated (None)."""
  n = mesh.shape['fsdp']
  if n == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return None
  dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d])
          if shape[d] % n == 0]
  return dims[0] if dims else None


def leaf_spec(mesh: Mesh, shape) -> P:
  dim = fsdp_dim(mesh, shape)
  if dim is None:
    return P()
  spec = [None] * len(shape)
  spec[dim] = 'fsdp'
  return P(*spec)


def leaf_sharding(mesh: Mesh, shape) -> NamedSharding:
  """The sharding of one state leaf (see `fsdp_dim`). Outside the gradient
  computation XLA inserts the collectives; inside it `microbatch` does."""
  return NamedSharding(mesh, leaf_spec(mesh, shape))


def state_sharding(mesh: Mesh, state):
  """Shardings for a stage state (concrete or abstract), leaf by leaf."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, tuple(x.shape)), state)


# The mesh of the step being traced: set by `jit` while it traces, read by
# `microbatch.accumulate`, which runs the per-example work of a step under
# shard_map with one explicit gradient reduction. Steps stay unaware of it.
_STEP_MESH = contextvars.ContextVar('mmd_jax_step_mesh', default=None)


def step_mesh() -> Mesh | None:
  return _STEP_MESH.get()


PRECISIONS = ('default', 'high', 'highest')


def under_mesh(fn, mesh: Mesh, precision: str = 'default'):
  """`fn` with `mesh` as the step mesh, and `precision` as the default
  matmul precision, while it is traced."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    token = _STEP_MESH.set(mesh)
    try:
      with jax.default_matmul_precision(
          None if precision == 'default' else precision):
        return fn(*args, **kwargs)
    finally:
      _STEP_MESH.reset(token)
  return traced


def jit(fn, mesh: Mesh, in_shardings, out_shardings, donate_argnums=(),
        precision: str = 'default'):
  """`jax.jit` of a step over `mesh`: every way the project compiles a step
  (the loop, bench, describe, tests) goes through here."""
  return jax.jit(under_mesh(fn, mesh, precision), in_shardings=in_shardings,
                 out_shardings=out_shardings, donate_argnums=donate_argnums)


def device_index(mesh: Mesh) -> jax.Array:
  """Inside shard_map over `mesh`: this device's block of a batch sharded
  with `batch_sharding` (data-major, as P(('data', 'fsdp')) lays rows)."""
  return (jax.lax.axis_index('data') * mesh.shape['fsdp']
          + jax.lax.axis_index('fsdp'))


def check_batch(global_batch: int, mesh: Mesh, key: str,
                micro_batches: int = 1):
  n = mesh.devices.size
  if global_batch % n:
    raise MeshError(f'{key}={global_batch} is not divisible by the {n} '
                    'devices of the mesh')
  if (global_batch // micro_batches) % n:
    raise MeshError(f'{key}={global_batch} split into grad_accum_steps='
                    f'{micro_batches} micro-batches is not divisible by the '
                    f'{n} devices of the mesh')
