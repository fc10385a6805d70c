"""Tiny configs and in-process runs for the pipeline tests."""
import importlib
import os


def config(name: str, arg: str | None = None, overrides: dict | None = None):
  """configs/<name>.py:<arg>, with {'section.key': value} overrides."""
  c = importlib.import_module(f'configs.{name}').get_config(arg)
  if overrides:
    c.update_from_flattened_dict(overrides)
  return c


def run(name: str, arg: str | None, workdir, overrides: dict | None = None):
  """Trains and evaluates in this process; returns the config."""
  from mmd_jax.run import runner
  c = config(name, arg, overrides)
  runner.run(c, str(workdir))
  return c


def xla_flags(devices: int | None = None, fast_compile: bool = True) -> str:
  """This session's XLA flags (conftest's), with `devices` CPU devices, for
  a subprocess's environment; `fast_compile=False` drops the optimisation
  level 0 that conftest adds (default code generation)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if not fast_compile:
    flags = ' '.join(f for f in flags.split()
                     if not f.startswith('--xla_backend_optimization_level'))
  if devices:
    flags += f' --xla_force_host_platform_device_count={devices}'
  return flags.strip()
