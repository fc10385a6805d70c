"""Gradient accumulation inside a jitted step (`config.grad_accum_steps`).

A global batch of B rows is split into n micro-batches of B/n rows, taken
strided (micro-batch i holds rows i, i+n, i+2n, ...) so every device's
shard contributes to every micro-batch and the split moves no data. A
`lax.scan` runs one micro-batch at a time and averages gradients and
metrics; activations are held for one micro-batch only.

Exactness: every random draw inside a loss goes through `Rows`, which draws
for the whole global batch and keeps this micro-batch's rows. A split batch
therefore sees exactly the noise the unsplit batch sees, and the update
differs from the unsplit one by float summation order only. With n = 1,
`Rows` draws exactly what plain `jax.random` calls would.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmd_jax import loops


@dataclasses.dataclass(frozen=True)
class Rows:
  """Which rows of the global batch a micro-batch holds."""
  index: jax.Array | int = 0
  count: int = 1

  def _take(self, full, m: int):
    full = full.reshape((m, self.count) + full.shape[1:])
    return jax.lax.dynamic_index_in_dim(full, self.index, axis=1,
                                        keepdims=False)

  def _draw(self, fn, shape):
    if self.count == 1:
      return fn(tuple(shape))
    m = shape[0]
    return self._take(fn((m * self.count,) + tuple(shape[1:])), m)

  def normal(self, key, shape, dtype=jnp.float32):
    return self._draw(lambda s: jax.random.normal(key, s, dtype), shape)

  def uniform(self, key, shape, minval=0.0, maxval=1.0):
    return self._draw(
        lambda s: jax.random.uniform(key, s, minval=minval, maxval=maxval),
        shape)

  def bernoulli(self, key, p, shape):
    return self._draw(lambda s: jax.random.bernoulli(key, p, s), shape)

  def positions(self, m: int):
    """(row index in the global batch, global batch size) of the m rows."""
    return jnp.arange(m) * self.count + self.index, m * self.count


ALL = Rows()


def split(tree, n: int):
  """(B, ...) leaves -> (n, B/n, ...): micro-batch i holds rows i::n."""
  def one(v):
    if v.shape[0] % n:
      raise ValueError(f'batch of {v.shape[0]} rows is not divisible into '
                       f'{n} micro-batches')
    return jnp.swapaxes(v.reshape((v.shape[0] // n, n) + v.shape[1:]), 0, 1)
  return jax.tree.map(one, tree)


def accumulate(fn, batch, n: int):
  """Mean over n micro-batches of fn(micro_batch, rows) -> pytree (gradients
  and metrics). `batch` is a pytree of (B, ...) arrays (may be empty: then
  fn only gets `rows`)."""
  if n == 1:
    return fn(batch, ALL)
  micro = split(batch, n)
  first = jax.tree.map(lambda v: v[0], micro)
  shapes = jax.eval_shape(lambda b: fn(b, Rows(0, n)), first)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(acc, xs):
    i, mb = xs
    out = fn(mb, Rows(i, n))
    return jax.tree.map(jnp.add, acc, out), None

  total, _ = loops.scan(body, zeros, (jnp.arange(n), micro))
  return jax.tree.map(lambda v: v / n, total)
