"""Any (N, D) float array saved with np.save."""
from __future__ import annotations

import io

import numpy as np

from mmd_jax.errors import Error
from mmd_jax.workdir import fs


class DataError(Error, ValueError):
  """Bad data input; the message names the file and the problem."""


# Evaluation scores samples against, and sets its real-vs-real floor with,
# two disjoint halves of the data of at least two points each.
MIN_POINTS = 4


def load_points(path: str) -> np.ndarray:
  if not path:
    raise DataError('data.path is empty: give --config.data.path=FILE.npy')
  if not fs.isfile(path):
    raise DataError(f'data.path {path!r} does not exist')
  try:
    arr = np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False)
  except Exception as e:  # np.load raises several types for bad files.
    raise DataError(f'data.path {path!r} is not a readable .npy array ({e})')
  if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(
      arr.dtype, np.complexfloating):
    raise DataError(f'data.path {path!r} holds dtype {arr.dtype}, '
                    'expected a real numeric array')
  if arr.ndim != 2:
    raise DataError(f'data.path {path!r} has shape {arr.shape}, '
                    'expected rank 2 (N, D)')
  if not np.all(np.isfinite(arr)):
    raise DataError(f'data.path {path!r} contains NaN or inf')
  check_rows(path, arr)
  return arr.astype(np.float32)


def check_rows(path: str, arr):
  if arr.shape[0] == 0:
    raise DataError(f'data.path {path!r} is empty (0 rows)')
  if arr.shape[0] < MIN_POINTS:
    raise DataError(f'data.path {path!r} has {arr.shape[0]} row(s); at least '
                    f'{MIN_POINTS} are needed (evaluation compares two '
                    'disjoint halves of at least 2 points)')
