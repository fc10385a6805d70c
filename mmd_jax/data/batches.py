"""Deterministic, resumable, per-process batching over an in-memory dataset.

Step i's global batch is a pure function of (seed, i): positions
i*B ... i*B+B-1 of an endless stream of per-epoch permutations. So resuming
needs only the step number, and the trajectory does not depend on how many
processes share the work: each process reads only its contiguous slice of
the global batch and the slices are stitched into one global jax.Array.
"""
from __future__ import annotations

import jax
import numpy as np


class BatchStream:

  def __init__(self, arrays: dict, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    n = len(next(iter(arrays.values())))
    if n == 0:
      raise ValueError('dataset is empty')
    if global_batch % process_count:
      raise ValueError(f'batch size {global_batch} is not divisible by the '
                       f'{process_count} processes')
    self.arrays = arrays
    self.n = n
    self.global_batch = global_batch
    self.seed = seed
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self._perm_cache = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perm_cache:
      if len(self._perm_cache) > 2:
        self._perm_cache.clear()
      rng = np.random.default_rng([self.seed, epoch])
      self._perm_cache[epoch] = rng.permutation(self.n)
    return self._perm_cache[epoch]

  def local_indices(self, step: int) -> np.ndarray:
    pos = step * self.global_batch + self.offset + np.arange(self.local_batch)
    epochs, offs = np.divmod(pos, self.n)
    out = np.empty(self.local_batch, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._perm(int(e))[offs[sel]]
    return out

  def local_batch_at(self, step: int) -> dict:
    idx = self.local_indices(step)
    return {k: v[idx] for k, v in self.arrays.items()}

  def global_batch_at(self, step: int, sharding) -> dict:
    local = self.local_batch_at(step)
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local.items()}
