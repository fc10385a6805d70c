"""Entry point: python -m mmd_jax.main --config=configs/NAME.py[:ARG] --workdir=W"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mmd_jax.run.cli import (parse_flags, patient_cpu_collectives,
                             quiet_libraries)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'describe'],
    'train: run config.stages (finished ones are skipped). eval: evaluate the '
    'checkpoints already in --workdir without training and rewrite the report. '
    'describe: parameter counts, mesh, and XLA-estimated FLOPs and memory per '
    'step of every stage, on abstract shapes; writes W/describe.json.')
_CKPT_STEP = flags.DEFINE_integer(
    'checkpoint_step', None,
    '--mode=eval: evaluate this checkpoint step of every stage (default: the '
    'latest of each).')
_COORD = flags.DEFINE_string('coordinator_address', None,
                             'HOST:PORT of process 0, for explicit multi-process runs.')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PID = flags.DEFINE_integer('process_id', None, 'This process index.')
_DIST = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'jax.distributed.initialize(): auto = when --coordinator_address is given '
    'or the environment is a multi-process job (SLURM, Open MPI, a multi-host '
    'TPU slice, JAX_COORDINATOR_ADDRESS); on = always (TPU/SLURM/MPI '
    'auto-detection); off = never.')
flags.mark_flags_as_required(['config', 'workdir'])


def _multi_process_env() -> bool:
  import os
  env = os.environ
  def more_than_one(k):
    try:
      return int(env.get(k, '1')) > 1
    except ValueError:
      return False
  return (more_than_one('SLURM_NTASKS') or more_than_one('OMPI_COMM_WORLD_SIZE')
          or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
          or bool(env.get('JAX_COORDINATOR_ADDRESS')))


def _init_distributed(jax):
  """Safe to start identically on every host: explicit flags win, else the
  cluster is detected by jax.distributed.initialize itself."""
  if _DIST.value == 'off':
    return
  # CPU processes need a collectives backend (no effect on GPU/TPU).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if _COORD.value:
    jax.distributed.initialize(coordinator_address=_COORD.value,
                               num_processes=_NPROC.value,
                               process_id=_PID.value)
  elif _DIST.value == 'on' or _multi_process_env():
    jax.distributed.initialize()


def main(argv):
  del argv
  quiet_libraries()
  patient_cpu_collectives()
  import jax  # after flag parsing, so --help is fast
  _init_distributed(jax)
  from mmd_jax import errors
  from mmd_jax.run import runner
  logging.info('JAX %s: %d processes, %d devices (%s)', jax.__version__,
               jax.process_count(), jax.device_count(), jax.default_backend())
  try:
    if _MODE.value == 'describe':
      from mmd_jax.run import describe
      print(describe.format_summary(
          describe.describe(_CONFIG.value, _WORKDIR.value)))
    elif _MODE.value == 'eval':
      runner.evaluate_workdir(_CONFIG.value, _WORKDIR.value,
                              _CKPT_STEP.value)
    else:
      runner.run(_CONFIG.value, _WORKDIR.value)
  except errors.Preempted as e:
    # Non-zero, so job controllers (SLURM --requeue, GKE/xpk) restart it.
    logging.warning('%s', e)
    print(f'pre-empted: {e}', file=sys.stderr)
    sys.exit(143)
  except errors.Error as e:
    print(f'error: {e}', file=sys.stderr)
    if getattr(e, 'exit_at_once', False):
      # orbax's writer threads, torn down at interpreter exit after a failed
      # write, print tracebacks after this line; the state is on disk.
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)

if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
