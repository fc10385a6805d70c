"""Shared by the command-line entry points (main, bench, layer_profile)."""
from __future__ import annotations

import sys

from absl import flags

from mmd_jax.workdir import fs


def parse_flags(argv):
  """absl's parser, with bad --config.KEY overrides reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
  except SyntaxError as e:   # in the --config file itself
    print(f'error: {e.filename}:{e.lineno}: {e.msg} (config file syntax)',
          file=sys.stderr)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    bad = [a for a in argv[1:] if a.startswith('--config.')]
    print(f'error: bad config override {" ".join(bad)}: '
          f'{type(e).__name__} {e}', file=sys.stderr)
  sys.exit(2)


def write_json(path: str, obj):
  """Writes a CLI's JSON result, creating the folder."""
  import json
  import os
  if os.path.dirname(path):
    fs.makedirs(os.path.dirname(path))
  fs.write_text(path, json.dumps(obj, indent=2))
