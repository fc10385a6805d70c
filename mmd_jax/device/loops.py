"""`lax.scan` for the loops inside step functions, with a switch to unroll
them all when counting FLOPs.

XLA's cost analysis counts a loop body once, whatever its trip count, so a
step with EMD's K-step Langevin chain or n micro-batches would report too
few FLOPs. Under `unrolled()` every scan traced through `scan` is fully
unrolled, so the count is exact. The switch is read at trace time: use it
around a fresh `jax.jit(...).lower(...)`, never around a call of a function
that is already compiled.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

_UNROLL = contextvars.ContextVar('mmd_jax_unroll_scans', default=False)


@contextlib.contextmanager
def unrolled():
  token = _UNROLL.set(True)
  try:
    yield
  finally:
    _UNROLL.reset(token)


def scan(f, init, xs=None, length=None):
  return jax.lax.scan(f, init, xs, length=length,
                      unroll=True if _UNROLL.get() else 1)
