"""Teacher parameters as plain files, to distil a teacher trained elsewhere.

  python -m mmd_jax.workdir.teacher_io --workdir=W/teacher --output=teacher.npz

exports a teacher stage's sampling parameters (the EMA when it has one).
`config.teacher.checkpoint=teacher.npz` (or `.msgpack`, from
`flax.serialization.msgpack_serialize(params)`) imports such a file into
another run; the config's `model` section must describe the same module.
The import is materialised as that workdir's `teacher` stage (a checkpoint
at the teacher's final step), so sampling, evaluation and every
distillation stage read it exactly as they read a teacher trained there.

The file format lives in param_files.py (re-exported here).
"""
from __future__ import annotations

import sys

from mmd_jax.workdir.param_files import (  # noqa: F401 (public here too)
    PARAM_FILE_SUFFIXES, TeacherImportError, load_params, read_flat,
    save_params)


def export(stage_dir: str, output: str) -> int:
  """Writes the stage's sampling parameters to `output`; returns the
  number of arrays."""
  from mmd_jax.run.stage_dir import open_stage
  from mmd_jax.workdir import param_files
  params = open_stage(stage_dir).state.sampling_params
  save_params(output, params)
  return len(param_files.flatten(params))


def main(argv):
  from absl import flags
  del argv
  from mmd_jax.errors import Error
  try:
    n = export(flags.FLAGS.workdir, flags.FLAGS.output)
  except Error as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {n} arrays to {flags.FLAGS.output}')
  return 0


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'A teacher stage directory, W/teacher.')
  flags.DEFINE_string('output', None, 'Output .npz or .msgpack file.')
  flags.mark_flags_as_required(['workdir', 'output'])
  app.run(lambda argv: sys.exit(main(argv)))
