"""Shared by the command-line entry points (main, sample, bench,
layer_profile): flag parsing with one-line errors, and quiet libraries."""
from __future__ import annotations

import os
import re
import sys

from absl import flags, logging

# TensorFlow (tfds input pipelines, clu's writers) announces its oneDNN
# kernels at import; it computes nothing here that they would speed up
# (JAX does the math), so they are off and the notice with them.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')


class _QuietLibraries(logging.logging.Filter):
  """Keeps library INFO chatter (orbax saves, clu notes, JAX's search for a
  TPU) out of the log, and orbax's tracebacks of a write that failed for
  want of space: the run's one-line error (CheckpointWriteError) says it."""

  def filter(self, record):
    orbax = '/orbax/' in record.pathname
    if orbax and record.levelno >= logging.logging.ERROR:
      text = str(record.msg) + str(record.exc_info and record.exc_info[1])
      from mmd_jax.workdir.checkpoint import FULL_DISK_MARKERS
      return not any(m in text for m in FULL_DISK_MARKERS)
    if record.levelno >= logging.logging.WARNING:
      return True
    return not any(f'/{lib}/' in record.pathname for lib in (
        'orbax', 'tensorflow')) and not record.pathname.endswith(
            'xla_bridge.py') and 'work unit notes' not in str(record.msg)


# XLA:CPU ends the process (SIGABRT: "Termination timeout ... of 40 seconds
# exceeded") when one of its in-process devices reaches a collective 40 s
# after the others. With several CPU devices on a busy host (tests, a laptop
# mesh) a device can lag that long: an 8-device toy run beside three other
# jobs on 2 cores lagged over 20 s in 2 of 12 runs and aborted in 1 of 6.
# A real deadlock still ends, after 10 minutes. A value the user set wins.
CPU_COLLECTIVE_TIMEOUT_FLAG = (
    '--xla_cpu_collective_call_terminate_timeout_seconds=600')


def patient_cpu_collectives(environ=os.environ):
  """Adds CPU_COLLECTIVE_TIMEOUT_FLAG to XLA_FLAGS unless the timeout is
  set there; XLA reads XLA_FLAGS when the first backend starts."""
  flags_now = environ.get('XLA_FLAGS', '')
  name = CPU_COLLECTIVE_TIMEOUT_FLAG.split('=')[0]
  if name not in flags_now:
    environ['XLA_FLAGS'] = f'{flags_now} {CPU_COLLECTIVE_TIMEOUT_FLAG}'.strip()


def quiet_libraries():
  logging.get_absl_handler().addFilter(_QuietLibraries())

from mmd_jax.workdir import fs


def parse_flags(argv, flag_values=None):
  """absl's parser, with a missing or broken --config file and bad
  --config.KEY overrides reported in one line."""
  fv = flags.FLAGS if flag_values is None else flag_values
  try:
    rest = fv(argv)
    if 'config' in fv and fv['config'].present:
      # config_flags keeps a failed load as a stand-in that raises on use.
      fv['config'].value.get('stages')
    return rest
  except flags.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
  except SyntaxError as e:   # in the --config file itself
    print(f'error: {e.filename}:{e.lineno}: {e.msg} (config file syntax)',
          file=sys.stderr)
  except OSError as e:   # the --config file cannot be read
    print(f'error: --config: {_last_line(e)}', file=sys.stderr)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    print(f'error: {_bad_override(argv, e)}', file=sys.stderr)
  sys.exit(2)


def _one_line(e) -> str:
  return ' '.join(str(e).split())


def _last_line(e) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


def _bad_override(argv, e) -> str:
  """The override a KeyError names (a key the config lacks), else all."""
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  # KeyError('trian'), or AttributeError("'stepz'\nDid you mean ...").
  # ml_collections' message may hold a literal backslash-n.
  missing = re.split(r'\\n|\n', str(e.args[0]))[0].strip('\'"\\ ') if (
      isinstance(e, (KeyError, AttributeError)) and e.args) else ''
  named = [a for a in overrides
           if missing and missing in a.split('=')[0].split('.')[1:]]
  if named:
    return (f'{named[0]}: the config has no key {missing!r} (see '
            'configs/default.py for the keys)')
  return (f'bad config override {" ".join(overrides)}: '
          f'{type(e).__name__} {_one_line(e)}')


def write_json(path: str, obj):
  """Writes a CLI's JSON result, creating the folder."""
  import json
  import os
  if os.path.dirname(path):
    fs.makedirs(os.path.dirname(path))
  fs.write_text(path, json.dumps(obj, indent=2))
