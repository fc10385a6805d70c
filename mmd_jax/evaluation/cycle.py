"""Which condition each evaluation sample gets: class labels cycle over the
classes, captions over the caption table's rows (or the rows asked for)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ConditionCycle:
  num: int = 0               # classes, or caption rows; 0: unconditional
  table: object = None       # data.captions.CaptionTable for captions
  ids: tuple | None = None   # the rows to cycle over (default: all)

  def ids_for(self, n: int):
    """The condition ids of n samples (None when unconditional)."""
    if not self.num:
      return None
    pool = np.asarray(self.ids if self.ids else np.arange(self.num))
    return pool[np.arange(n) % len(pool)].astype(np.int32)

  def batch(self, ids):
    """The condition pytree of a batch of ids."""
    if self.table is None:
      return jnp.asarray(ids)
    return jax.tree.map(jnp.asarray, self.table.gather(ids))


def of(spec, dataset, ids=None) -> ConditionCycle:
  """The cycle for a denoiser `spec` trained on `dataset`."""
  if spec.captions is not None:
    return ConditionCycle(len(dataset.captions), dataset.captions,
                          tuple(ids) if ids else None)
  return ConditionCycle(spec.num_classes, None, tuple(ids) if ids else None)
