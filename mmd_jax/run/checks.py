"""The one-line config error and the small validators every config check
uses: the runner's (config_check.py) and each method's own `validate`."""
from __future__ import annotations

import contextlib
import contextvars

from mmd_jax.errors import Error

# True while a run is only described (--mode=describe): nothing trains and
# nothing is loaded, so shapes will do (a weightless diffusers directory,
# a prompts-only file under methods that would train on examples).
_DESCRIBING = contextvars.ContextVar('mmd_jax_describing', default=False)


@contextlib.contextmanager
def describing():
  token = _DESCRIBING.set(True)
  try:
    yield
  finally:
    _DESCRIBING.reset(token)


def is_describing() -> bool:
  return _DESCRIBING.get()


class ConfigError(Error, ValueError):
  """A bad config value. str() is the one line shown to the user."""


def need(cond: bool, key: str, msg: str):
  if not cond:
    raise ConfigError(f'config.{key}: {msg}')


def lookup(config, key: str):
  v = config
  for part in key.split('.'):
    v = v[part]
  return v


def positive_int(config, key: str):
  v = lookup(config, key)
  need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key,
       f'must be an integer >= 1, got {v!r}')


def one_of(config, key: str, known):
  v = lookup(config, key)
  need(v in known, key, f'unknown {v!r}; known: {tuple(known)}')


def time_powers(config, key: str, steps_key: str):
  """`key` holds a sampler's ((k, power), ...) (plugins.base.TimeSpaced):
  every k one of `steps_key`'s, every power > 0. An absent key is ()."""
  section, name = key.split('.')
  ks = tuple(lookup(config, steps_key))
  for pair in config[section].get(name, ()):
    need(len(pair) == 2 and pair[0] in ks and pair[1] > 0, key,
         f'{tuple(pair)!r} is not (k of {steps_key}, power > 0)')


def powers_of(config, key: str) -> tuple:
  """`key`'s ((k, power), ...) as ints and floats (() when absent)."""
  section, name = key.split('.')
  return tuple((int(k), float(p)) for k, p in config[section].get(name, ()))


def guidance_needs_labels(config, key: str, data):
  """Classifier-free guidance (`key`) guides towards a class: refused on
  data without labels, where it would be silently ignored."""
  v = lookup(config, key)
  captions = getattr(data, 'caption_signature', None)
  need(not v or bool(data.num_classes) or captions is not None, key,
       f'{v} asks for classifier-free guidance, but {data.name} has no '
       'labels or captions (an unconditional model); set it to 0')
  need(not v or captions is None or captions.null is not None, key,
       f'{v} asks for classifier-free guidance, and the caption file has '
       'no null_emb (the unconditional input); add it or set this to 0')
