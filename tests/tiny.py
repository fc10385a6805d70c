"""Tiny configs and in-process runs for the pipeline tests."""
import importlib


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
