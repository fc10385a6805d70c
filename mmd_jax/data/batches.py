"""Deterministic, resumable, per-process batching over an in-memory dataset.

Step i's global batch is a pure function of (seed, i): positions
i*B ... i*B+B-1 of an endless stream of per-epoch permutations. So resuming
needs only the step number, and the trajectory does not depend on how many
processes share the work: each process reads only its contiguous slice of
the global batch and the slices are stitched into one global jax.Array.

The source is a dict of in-memory arrays or anything with `__len__` and
`take(indices) -> dict` (data/images.py reads tfds that way). Random
horizontal flips, when asked for, are also a pure function of (seed, step,
position in the global batch).
"""
from __future__ import annotations

import concurrent.futures

import jax
import numpy as np


class ArraySource:

  def __init__(self, arrays: dict):
    self.arrays = arrays

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def take(self, idx) -> dict:
    return {k: v[idx] for k, v in self.arrays.items()}


class BatchStream:

  def __init__(self, source, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               random_flip: bool = False, prefetch: bool = False):
    if isinstance(source, dict):
      source = ArraySource(source)
    n = len(source)
    if n == 0:
      raise ValueError('dataset is empty')
    if global_batch % process_count:
      raise ValueError(f'batch size {global_batch} is not divisible by the '
                       f'{process_count} processes')
    self.source = source
    self.random_flip = random_flip
    # Slow sources (decoding images) read the next step's batch in the
    # background while the device runs this one.
    self._pool = (concurrent.futures.ThreadPoolExecutor(1) if prefetch
                  else None)
    self._ahead = None   # (step, future)
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

  def _read(self, step: int) -> dict:
    batch = self.source.take(self.local_indices(step))
    if self.random_flip:
      rng = np.random.default_rng([self.seed, 104729, step])
      flip = rng.random(self.global_batch)[
          self.offset:self.offset + self.local_batch] < 0.5
      x = batch['x']
      batch['x'] = np.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)),
                            x[:, :, ::-1], x)
    return batch

  def local_batch_at(self, step: int) -> dict:
    if self._pool is None:
      return self._read(step)
    if self._ahead is not None and self._ahead[0] == step:
      batch = self._ahead[1].result()
    else:
      batch = self._read(step)
    self._ahead = (step + 1, self._pool.submit(self._read, step + 1))
    return batch

  def global_batch_at(self, step: int, sharding) -> dict:
    local = self.local_batch_at(step)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, v), local)
