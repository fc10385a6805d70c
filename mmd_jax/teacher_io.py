"""Teacher parameters as plain files, to distil a teacher trained elsewhere.

  python -m mmd_jax.teacher_io --workdir=W/teacher --output=teacher.npz

exports a teacher stage's sampling parameters (the EMA when it has one).
`config.teacher.checkpoint=teacher.npz` (or `.msgpack`, from
`flax.serialization.msgpack_serialize(params)`) imports such a file into
another run; the config's `model` section must describe the same module.
The import is materialised as that workdir's `teacher` stage (a checkpoint
at the teacher's final step), so sampling, evaluation and every
distillation stage read it exactly as they read a teacher trained there.

File layout: one array per parameter, named by its path joined with '/',
e.g. `params/Dense_0/kernel` (the `params` collection of `module.init`).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

PARAM_FILE_SUFFIXES = ('.npz', '.msgpack')


class TeacherImportError(ValueError):
  """The file does not hold the configured module's parameters."""


def _flatten(tree) -> dict:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out['/'.join(str(getattr(k, 'key', getattr(k, 'name', k)))
                 for k in path)] = leaf
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_params(path: str, params) -> None:
  flat = {k: np.asarray(jax.device_get(v)) for k, v in _flatten(params).items()}
  tmp = path + '.tmp'
  if path.endswith('.msgpack'):
    from flax import serialization
    with open(tmp, 'wb') as f:
      f.write(serialization.msgpack_serialize(_unflatten(flat)))
  else:
    with open(tmp, 'wb') as f:
      np.savez(f, **flat)
  os.replace(tmp, path)


def read_flat(path: str) -> dict:
  if not os.path.isfile(path):
    raise TeacherImportError(f'teacher.checkpoint {path!r} does not exist')
  try:
    if path.endswith('.msgpack'):
      from flax import serialization
      with open(path, 'rb') as f:
        return {k: np.asarray(v) for k, v in _flatten(
            serialization.msgpack_restore(f.read())).items()}
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception as e:  # numpy and msgpack raise several types
    raise TeacherImportError(
        f'teacher.checkpoint {path!r} is not a readable parameter file '
        f'({type(e).__name__}: {e})') from None


def load_params(path: str, abstract_params) -> dict:
  """The file's parameters, checked name by name and shape by shape against
  the module's (abstract) params; the first difference is the error."""
  flat = read_flat(path)
  expected = _flatten(abstract_params)
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
  return _unflatten({k: np.asarray(v, expected[k].dtype)
                     for k, v in flat.items()})


def main(argv):
  from absl import flags
  del argv
  import ml_collections

  from mmd_jax import parallel, stages
  from mmd_jax.data import load_dataset
  from mmd_jax.methods import teacher
  stage_dir = os.path.abspath(flags.FLAGS.workdir)
  cfg_path = os.path.join(stage_dir, 'config.json')
  if not os.path.exists(cfg_path):
    print(f'error: {stage_dir} is not a teacher stage directory (no '
          'config.json)', file=sys.stderr)
    return 2
  import json
  with open(cfg_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.teacher.checkpoint = stage_dir
  dataset = load_dataset(config.data)
  spec = stages.denoiser_spec(config, dataset)
  state = stages.load_teacher(config, os.path.dirname(stage_dir), dataset,
                              spec, parallel.make_mesh(config.mesh))
  params = teacher.sampling_params(state)
  save_params(flags.FLAGS.output, params)
  print(f'wrote {len(_flatten(params))} arrays to {flags.FLAGS.output}')
  return 0


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'A teacher stage directory, W/teacher.')
  flags.DEFINE_string('output', None, 'Output .npz or .msgpack file.')
  flags.mark_flags_as_required(['workdir', 'output'])
  app.run(lambda argv: sys.exit(main(argv)))
