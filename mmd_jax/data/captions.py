"""Caption-conditioned data: one .npz with examples, caption ids and the
caption table (token embeddings from a frozen text encoder, computed once).

Arrays (loaded with allow_pickle=False):
  x          [N, ...]  examples (optional: without it the file holds
                       prompts only)
  caption_id [N] int   row of the caption table
  emb        [K, L, D] token embeddings
  mask       [K, L]    1 for real tokens (optional: all ones)
  pooled     [K, P]    sentence vectors (optional)
  null_emb   [L, D], null_mask [L], null_pooled [P]  the empty caption
                       (optional; guidance and caption dropout need it)
  captions   [K] str   the captions' text (optional)
Batches carry the gathered rows: {'x', 'cond': {'emb', 'mask', 'pooled'?}}.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np

from mmd_jax.data.points import DataError
from mmd_jax.numerics.condition import Captions
from mmd_jax.workdir import fs

ARRAYS = ('x', 'caption_id', 'emb', 'mask', 'pooled', 'null_emb',
          'null_mask', 'null_pooled', 'captions')


@dataclasses.dataclass
class CaptionTable:
  emb: np.ndarray                   # [K, L, D] float32
  mask: np.ndarray                  # [K, L] float32 (0/1)
  pooled: np.ndarray | None = None  # [K, P]
  null: dict | None = None          # {'emb': [L, D], 'mask': [L], 'pooled'?}
  texts: tuple | None = None        # K strings

  def __len__(self):
    return self.emb.shape[0]

  def signature(self) -> Captions:
    return Captions(self.emb.shape[1], self.emb.shape[2],
                    0 if self.pooled is None else self.pooled.shape[1],
                    self.null)

  def gather(self, ids) -> dict:
    out = {'emb': self.emb[ids], 'mask': self.mask[ids]}
    if self.pooled is not None:
      out['pooled'] = self.pooled[ids]
    return out

  def text(self, i: int) -> str:
    return self.texts[i] if self.texts else f'caption {i}'


class CaptionSource:
  """A batch source (data/batches.py) over examples with caption ids: each
  batch gathers its rows of the caption table on the host."""

  def __init__(self, x: np.ndarray, caption_id: np.ndarray,
               table: CaptionTable, example_shape: tuple = ()):
    self.x, self.caption_id, self.table = x, caption_id, table
    self.example_shape = tuple(example_shape)

  def __len__(self):
    return len(self.caption_id)

  def take(self, idx) -> dict:
    out = {'cond': self.table.gather(self.caption_id[idx])}
    if self.x is not None:
      out['x'] = self.x[idx]
    else:
      # Prompts only: zeros that give the batch its shape. Only methods
      # that never read x train on such files (config_check refuses the
      # others).
      out['x'] = np.zeros((len(out['cond']['emb']),) + self.example_shape,
                          np.float32)
    return out


def _fail(path, name, problem):
  raise DataError(f'data.path {path!r}: array {name!r} {problem}')


def _real(path, name, a, ndim, dtype_kind='f'):
  if a.ndim != ndim:
    _fail(path, name, f'has shape {a.shape}, expected rank {ndim}')
  if dtype_kind == 'i':
    if not np.issubdtype(a.dtype, np.integer):
      _fail(path, name, f'has dtype {a.dtype}, expected integers')
    return a.astype(np.int64)
  if not (np.issubdtype(a.dtype, np.floating)
          or np.issubdtype(a.dtype, np.integer)):
    _fail(path, name, f'has dtype {a.dtype}, expected real numbers')
  if not np.all(np.isfinite(a)):
    _fail(path, name, 'contains NaN or inf')
  return a.astype(np.float32)


def _mask(path, name, a, shape):
  a = _real(path, name, a, len(shape))
  if a.shape != shape:
    _fail(path, name, f'has shape {a.shape}, expected {shape}')
  if not np.all((a == 0) | (a == 1)):
    _fail(path, name, 'holds values other than 0 and 1')
  return a


def _null(path, arrays, k_l_d, pooled_dim):
  if 'null_emb' not in arrays:
    for name in ('null_mask', 'null_pooled'):
      if name in arrays:
        _fail(path, name, 'is given without null_emb')
    return None
  _, length, dim = k_l_d
  emb = _real(path, 'null_emb', arrays['null_emb'], 2)
  if emb.shape != (length, dim):
    _fail(path, 'null_emb', f'has shape {emb.shape}, expected (L, D) = '
          f'{(length, dim)} as in emb')
  null = {'emb': emb, 'mask': _mask(
      path, 'null_mask', arrays['null_mask'], (length,))
      if 'null_mask' in arrays else np.ones((length,), np.float32)}
  if pooled_dim:
    if 'null_pooled' not in arrays:
      _fail(path, 'null_pooled', 'is missing: the table has pooled vectors, '
            'so the null caption needs one too')
    p = _real(path, 'null_pooled', arrays['null_pooled'], 1)
    if p.shape != (pooled_dim,):
      _fail(path, 'null_pooled', f'has shape {p.shape}, expected '
            f'({pooled_dim},) as in pooled')
    null['pooled'] = p
  return null


def _table(path, arrays) -> CaptionTable:
  if 'emb' not in arrays:
    _fail(path, 'emb', 'is missing (the caption table, [K, L, D])')
  emb = _real(path, 'emb', arrays['emb'], 3)
  k, length, _ = emb.shape
  if k == 0 or length == 0:
    _fail(path, 'emb', f'has shape {emb.shape}: no captions or no tokens')
  mask = (_mask(path, 'mask', arrays['mask'], (k, length))
          if 'mask' in arrays else np.ones((k, length), np.float32))
  pooled = None
  if 'pooled' in arrays:
    pooled = _real(path, 'pooled', arrays['pooled'], 2)
    if pooled.shape[0] != k:
      _fail(path, 'pooled', f'has {pooled.shape[0]} rows, emb has K = {k}')
  texts = None
  if 'captions' in arrays:
    t = arrays['captions']
    if t.dtype.kind != 'U' or t.shape != (k,):
      _fail(path, 'captions', f'is {t.dtype} {t.shape}, expected {k} '
            'unicode strings (one per row of emb)')
    texts = tuple(str(s) for s in t)
  null = _null(path, arrays, emb.shape,
               0 if pooled is None else pooled.shape[1])
  return CaptionTable(emb, mask, pooled, null, texts)


def save_conditioned(path: str, x, caption_id, table: CaptionTable):
  """The file `load_conditioned` reads (x may be None: prompts only)."""
  arrays = {'caption_id': np.asarray(caption_id, np.int32),
            'emb': table.emb, 'mask': table.mask}
  if x is not None:
    arrays['x'] = np.asarray(x, np.float32)
  if table.pooled is not None:
    arrays['pooled'] = table.pooled
  if table.null is not None:
    arrays.update({f'null_{k}': v for k, v in table.null.items()})
  if table.texts is not None:
    arrays['captions'] = np.array(table.texts)
  fs.save_npz(path, **arrays)


def load_conditioned(path: str):
  """(x or None, caption_id, CaptionTable) from a conditioned .npz; one
  DataError line naming the array for anything wrong."""
  if not fs.isfile(path):
    raise DataError(f'data.path {path!r} does not exist')
  try:
    with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # np.load raises several types for bad files.
    raise DataError(f'data.path {path!r} is not a readable .npz ({e})')
  unknown = sorted(set(arrays) - set(ARRAYS))
  if unknown:
    _fail(path, unknown[0], f'is not one of {ARRAYS}')
  table = _table(path, arrays)
  if 'caption_id' not in arrays:
    _fail(path, 'caption_id', 'is missing (each example\'s caption row)')
  ids = _real(path, 'caption_id', arrays['caption_id'], 1, 'i')
  if len(ids) and (ids.min() < 0 or ids.max() >= len(table)):
    bad = ids[(ids < 0) | (ids >= len(table))][0]
    _fail(path, 'caption_id', f'holds {bad}, outside the K = {len(table)} '
          'rows of emb')
  x = None
  if 'x' in arrays:
    x = _real(path, 'x', arrays['x'], arrays['x'].ndim)
    if x.ndim < 2 or x.shape[0] != len(ids):
      _fail(path, 'x', f'has shape {x.shape}, expected [N, ...] with N = '
            f'{len(ids)} as in caption_id')
  return x, ids, table
