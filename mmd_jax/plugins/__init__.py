"""The registry of training methods (stages/base.py has the interface).

Every module of this package except `base` is imported on first use and
registers its methods with `register`, so a new method is one new file
here: nothing else in the runner, evaluation or the command lines names it.
"""
from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict = {}
_discovered = False


def register(method):
  """Adds a `base.Method` instance; returns it."""
  if not method.name:
    raise ValueError(f'{type(method).__name__} has no name')
  if method.name in _REGISTRY and type(_REGISTRY[method.name]) is not type(
      method):
    raise ValueError(f'method {method.name!r} is registered twice')
  _REGISTRY[method.name] = method
  return method


def unregister(name: str):
  """Removes a method (tests register throwaway ones)."""
  _REGISTRY.pop(name, None)


def _discover():
  global _discovered
  if _discovered:
    return
  _discovered = True
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if info.name != 'base':
      importlib.import_module(f'{__name__}.{info.name}')


def names() -> tuple:
  _discover()
  return tuple(_REGISTRY)


def get(name: str):
  _discover()
  if name not in _REGISTRY:
    raise KeyError(f'unknown method {name!r}; known: {tuple(_REGISTRY)}')
  return _REGISTRY[name]


def methods() -> tuple:
  _discover()
  return tuple(_REGISTRY.values())


def provider_of(artifact: str):
  """The registered method that publishes `artifact`, or None."""
  found = [m for m in methods() if artifact in m.provides]
  if len(found) > 1:
    raise ValueError(f'artifact {artifact!r} is published by '
                     f'{[m.name for m in found]}')
  return found[0] if found else None
