"""Writes a captioned dataset's split as a captions file (the .npz format of
docs/captions.md), for tools that do not import JAX (a torch trainer):

  python -m mmd_jax.data.export --config=configs/digits_text.py \
      --output=digits_text_train.npz [--split=test]

Reading the file back with `--config.data.name=points
--config.data.path=F.npz` gives the same examples, caption ids and table.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags


def export(config, output: str, split: str = 'train') -> int:
  from mmd_jax.data import captions, load_dataset
  from mmd_jax.data.points import DataError
  data = load_dataset(config.data)
  if data.captions is None:
    raise DataError(f'data.name={config.data.name!r} has no captions to '
                    'export')
  part = data.train if split == 'train' else data.test
  if not isinstance(part, dict):
    raise DataError(f'{data.name} has no in-memory {split} split')
  captions.save_conditioned(output, part.get('x'), part['caption_id'],
                            data.captions)
  return len(part['caption_id'])


def main(argv):
  del argv
  f = flags.FLAGS
  n = export(f.config, f.output, f.split)
  print(f'wrote {n} {f.split} examples to {f.output}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  lock_config=True)
  flags.DEFINE_string('output', None, 'The .npz to write.')
  flags.DEFINE_enum('split', 'train', ('train', 'test'), 'Which split.')
  flags.mark_flags_as_required(['config', 'output'])
  app.run(lambda argv: sys.exit(main(argv)))
