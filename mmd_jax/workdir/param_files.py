"""Parameter pytrees as plain files: one array per parameter, named by its
path joined with '/' (e.g. `params/Dense_0/kernel`), in a `.npz`, or the
nested dict as `flax.serialization.msgpack_serialize` writes it.

Loading checks every name and shape against the module's (abstract)
parameters; the first difference is the one-line error.
"""
from __future__ import annotations


import jax
import numpy as np

from mmd_jax.errors import Error
from mmd_jax.workdir import fs

PARAM_FILE_SUFFIXES = ('.npz', '.msgpack')


class TeacherImportError(Error, ValueError):
  """The file does not hold the configured module's parameters."""


def flatten(tree) -> dict:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out['/'.join(str(getattr(k, 'key', getattr(k, 'name', k)))
                 for k in path)] = leaf
  return out


def unflatten(flat: dict) -> dict:
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_params(path: str, params) -> None:
  flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
  if path.endswith('.msgpack'):
    from flax import serialization
    fs.write_bytes(path, serialization.msgpack_serialize(unflatten(flat)))
  else:
    fs.save_npz(path, **flat)


def read_flat(path: str) -> dict:
  if not fs.isfile(path):
    raise TeacherImportError(f'teacher.checkpoint {path!r} does not exist')
  try:
    if path.endswith('.msgpack'):
      from flax import serialization
      return {k: np.asarray(v) for k, v in flatten(
          serialization.msgpack_restore(fs.read_bytes(path))).items()}
    return fs.load_npz(path)
  except Exception as e:  # numpy and msgpack raise several types
    raise TeacherImportError(
        f'teacher.checkpoint {path!r} is not a readable parameter file '
        f'({type(e).__name__}: {e})') from None


def check_values(named: dict, where: str, error=None):
  """Imported weights must be real floating point and finite: an int8
  (quantised), complex or NaN tensor is one line naming it."""
  error = error or TeacherImportError
  for key in sorted(named):
    v = np.asarray(named[key])
    if np.issubdtype(v.dtype, np.complexfloating) or not np.issubdtype(
        v.dtype, np.floating):
      raise error(f'{where}: tensor {key} has dtype {v.dtype}; a teacher '
                  'must be real floating point (dequantise it first)')
    bad = int(v.size - np.count_nonzero(np.isfinite(v)))
    if bad:
      raise error(f'{where}: tensor {key} has {bad} non-finite value(s) '
                  f'of {v.size}; the weights are damaged')


def load_params(path: str, abstract_params) -> dict:
  """The file's parameters, checked name by name and shape by shape against
  the module's (abstract) params; the first difference is the error."""
  flat = read_flat(path)
  check_values(flat, f'teacher.checkpoint {path!r}')
  expected = flatten(abstract_params)
  for key in sorted(set(expected) | set(flat)):
    if key not in flat:
      raise TeacherImportError(
          f'teacher.checkpoint {path!r} lacks parameter {key} (shape '
          f'{tuple(expected[key].shape)}) that config.model builds')
    if key not in expected:
      raise TeacherImportError(
          f'teacher.checkpoint {path!r} has parameter {key} (shape '
          f'{flat[key].shape}) that config.model does not build')
    if tuple(flat[key].shape) != tuple(expected[key].shape):
      raise TeacherImportError(
          f'teacher.checkpoint {path!r}: parameter {key} has shape '
          f'{flat[key].shape}, config.model builds {tuple(expected[key].shape)}')
  return unflatten({k: np.asarray(v, expected[k].dtype)
                     for k, v in flat.items()})
