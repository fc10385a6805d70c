"""The per-example work of a step: gradient accumulation over micro-batches
(`config.grad_accum_steps`) and, on a mesh, one gradient reduction per step.

A global batch of B rows is split into n micro-batches of B/n rows, taken
strided (micro-batch i holds rows i, i+n, i+2n, ...) so every device's
shard contributes to every micro-batch and the split moves no data. A
`lax.scan` runs one micro-batch at a time and sums gradients and metrics;
activations are held for one micro-batch only.

On a mesh of D > 1 devices (a step compiled through `parallel.jit`),
`accumulate` runs under `jax.shard_map`: each device works on its own rows
with the full parameters (gathered once, before the loop), sums its local
gradients over the micro-batches, and only then are they reduced, once:
`psum` over `data` and `psum_scatter` over `fsdp` for leaves that FSDP
shards, `psum` over both axes for the rest. Under plain GSPMD the reduction
sat inside the micro-batch loop and ran n times per step.

Exactness: every random draw inside a loss goes through `Rows`, which
derives each row's noise from (key, global row index) alone. The same row
therefore sees the same noise however the batch is split over micro-batches
and devices, and the update differs from the unsplit single-device one by
float summation order only.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmd_jax.device import loops, parallel


@dataclasses.dataclass(frozen=True)
class Rows:
  """Which rows of the global batch this piece of work holds: micro-batch
  `index` of `count`, on device `device` of `devices`, each of which holds
  an equal block of consecutive rows."""
  index: jax.Array | int = 0
  count: int = 1
  device: jax.Array | int = 0
  devices: int = 1

  def positions(self, m: int):
    """(global row indices, global batch size) of the m rows here."""
    block = m * self.count
    return (self.device * block + jnp.arange(m) * self.count + self.index,
            block * self.devices)

  def here(self, global_rows: int) -> int:
    """How many of a global batch's rows this piece holds."""
    return global_rows // (self.count * self.devices)

  def key(self, key):
    """A key for draws that are not per row (dropout masks): distinct for
    every micro-batch and device, `key` itself for the whole batch."""
    if self.count == 1 and self.devices == 1:
      return key
    return jax.random.fold_in(key, self.device * self.count + self.index)

  def normal(self, key, shape, dtype=jnp.float32):
    return self._per_row(key, shape,
                         lambda k, s: jax.random.normal(k, s, dtype))

  def uniform(self, key, shape, minval=0.0, maxval=1.0):
    return self._per_row(key, shape, lambda k, s: jax.random.uniform(
        k, s, minval=minval, maxval=maxval))

  def bernoulli(self, key, p, shape):
    return self._per_row(key, shape,
                         lambda k, s: jax.random.bernoulli(k, p, s))

  def _per_row(self, key, shape, fn):
    pos, _ = self.positions(shape[0])
    return jax.vmap(lambda r: fn(jax.random.fold_in(key, r),
                                 tuple(shape[1:])))(pos)


ALL = Rows()


def split(tree, n: int):
  """(B, ...) leaves -> (n, B/n, ...): micro-batch i holds rows i::n."""
  def one(v):
    if v.shape[0] % n:
      raise ValueError(f'batch of {v.shape[0]} rows is not divisible into '
                       f'{n} micro-batches')
    return jnp.swapaxes(v.reshape((v.shape[0] // n, n) + v.shape[1:]), 0, 1)
  return jax.tree.map(one, tree)


def _sum(fn, batch, n: int, device=0, devices: int = 1):
  """Sum over the n micro-batches of fn(micro_batch, rows)."""
  if n == 1:
    return fn(batch, Rows(0, 1, device, devices))
  micro = split(batch, n)
  first = jax.tree.map(lambda v: v[0], micro)
  shapes = jax.eval_shape(lambda b: fn(b, Rows(0, n, 0, devices)), first)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(acc, xs):
    i, mb = xs
    out = fn(mb, Rows(i, n, device, devices))
    return jax.tree.map(jnp.add, acc, out), None

  total, _ = loops.scan(body, zeros, (jnp.arange(n), micro))
  return total


def accumulate(fn, batch, n: int):
  """Mean over the global batch of fn(micro_batch, rows) -> pytree
  (gradients and metrics, each a mean over the rows it was given). `batch`
  is a pytree of (B, ...) arrays (may be empty: then fn only gets `rows`).

  Output leaves come back sharded like state leaves of their shape
  (`parallel.leaf_spec`), so gradients land where their parameters live."""
  mesh = parallel.step_mesh()
  if mesh is None or mesh.devices.size == 1:
    return jax.tree.map(lambda v: v / n, _sum(fn, batch, n))
  d = mesh.devices.size
  local = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct((v.shape[0] // (d * n),) + v.shape[1:],
                                     v.dtype), batch)
  shapes = jax.eval_shape(lambda b: fn(b, Rows(0, n, 0, d)), local)
  specs = jax.tree.map(lambda s: parallel.leaf_spec(mesh, s.shape), shapes)

  def reduce(v):
    v = v / (n * d)
    dim = parallel.fsdp_dim(mesh, v.shape)
    if dim is None:
      return jax.lax.psum(v, parallel.AXES)
    v = jax.lax.psum(v, 'data')
    return jax.lax.psum_scatter(v, 'fsdp', scatter_dimension=dim, tiled=True)

  def per_device(b):
    total = _sum(fn, b, n, parallel.device_index(mesh), d)
    return jax.tree.map(reduce, total)

  # check_vma=False: the transpose of a replicated (closed-over) parameter
  # is then the local gradient. With the check on, JAX would psum it inside
  # the micro-batch loop, which is the cost this function exists to avoid.
  return jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(jax.tree.map(lambda _: P(parallel.BATCH_AXES), batch),),
      out_specs=specs, check_vma=False)(batch)
