"""What a denoiser is conditioned on: nothing, class labels or a caption.

A condition is batch first: class labels are an int array [B]; a caption is
a dict {'emb': [B, L, D], 'mask': [B, L]} with an optional 'pooled' [B, P]
(a text encoder's sentence vector). Every method, sampler and evaluation
path passes it through as an opaque pytree; only the three operations here
(read it from a batch, replace rows by the null condition, pair it with the
null condition for guidance) know which kind it is.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Captions:
  """A caption table's signature, plus the null (empty-caption) condition
  that classifier-free guidance and caption dropout use. Compared by value,
  so two denoisers built for the same run are equal as pytree metadata."""
  length: int                     # L, tokens per caption
  dim: int                        # D, embedding width
  pooled_dim: int = 0             # P; 0: no pooled vector
  null: dict | None = None        # {'emb': [L, D], 'mask': [L], 'pooled'?}

  def _key(self):
    null = None if self.null is None else tuple(
        (k, np.asarray(v).tobytes()) for k, v in sorted(self.null.items()))
    return (self.length, self.dim, self.pooled_dim, null)

  def __eq__(self, other):
    return isinstance(other, Captions) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def zeros(self, batch: int) -> dict:
    """A condition of the right shapes (for init and abstract batches)."""
    out = {'emb': jnp.zeros((batch, self.length, self.dim), jnp.float32),
           'mask': jnp.ones((batch, self.length), jnp.float32)}
    if self.pooled_dim:
      out['pooled'] = jnp.zeros((batch, self.pooled_dim), jnp.float32)
    return out

  def abstract(self, batch: int, sharding=None) -> dict:
    return jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding),
        jax.eval_shape(lambda: self.zeros(batch)))

  def null_batch(self, batch: int) -> dict:
    return {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32),
                                (batch,) + np.shape(v))
            for k, v in self.null.items()}


def batch_size(cond) -> int:
  return jax.tree.leaves(cond)[0].shape[0]


def where_rows(take_first, a, b):
  """Row-wise select between two conditions of one kind: a where
  `take_first` [B] is true, else b."""
  def one(x, y):
    m = take_first.reshape(take_first.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, y)
  return jax.tree.map(one, a, b)


def concat(a, b):
  """Two conditions stacked along the batch (guidance's cond | null)."""
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def masked_mean(emb, mask):
  """Mean over a caption's unmasked tokens; zeros for a fully masked row
  (not NaN)."""
  m = mask.astype(emb.dtype)[..., None]
  return jnp.sum(emb * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)
