"""What jobs publish for later jobs, by name (plugins/base.py lists them).

A job offers its artifacts when the runner passes it; their values are
made only when a consumer first asks (a finished or imported job is then
restored), and their shapes likewise (from the abstract state). Values a
later job of the plan no longer needs are released.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class _Offer:
  """One job's artifacts: `publish()` and `shapes()` each run once."""

  def __init__(self, publish, shapes):
    self._publish, self._shapes = publish, shapes
    self.values = self.shapes = None

  def value(self, name):
    if self.values is None:
      if self._publish is None:
        raise KeyError(f'{name!r} was released: no later job needed it')
      self.values, self._publish = self._publish(), None
    return self.values[name]

  def shape(self, name):
    if self.shapes is None:
      self.shapes = self._shapes()
    return self.shapes[name]

  def release(self):
    self.values = self._publish = None


class Artifacts:
  """The run's artifacts (module docstring). Job-scoped names
  ('<job name>/<what>') are found through their job."""

  def __init__(self):
    self._by_name, self._by_job = {}, {}

  def offer(self, job_name: str, names, publish, shapes):
    """`names`: the method's `provides`; `publish()` -> {name: value} (and
    any job-scoped ones); `shapes()` -> the same as abstract values."""
    offer = _Offer(publish, shapes)
    self._by_job[job_name] = offer
    for n in names:
      self._by_name[n] = offer

  def _offer(self, name: str) -> _Offer:
    offer = (self._by_job.get(name.split('/')[0]) if '/' in name
             else self._by_name.get(name))
    if offer is None:
      raise KeyError(f'no job of this run publishes {name!r}')
    return offer

  def get(self, name: str):
    return self._offer(name).value(name)

  def shape(self, name: str):
    return self._offer(name).shape(name)

  def release_unneeded(self, declared: set, later: set):
    """Drops the values of every job whose artifacts are all `declared`
    needs of the plan's jobs and none of them is in `later` (the needs of
    the trained jobs still to come). Artifacts nobody declares (the space,
    which the run itself reads) are kept."""
    for job_name, offer in self._by_job.items():
      names = {n for n, o in self._by_name.items() if o is offer}
      hit = any(n in names or n.split('/')[0] == job_name for n in later)
      if names <= declared and not hit:
        offer.release()


def placeholders(shapes):
  """Concrete stand-ins for abstract artifacts (bench, the contract test):
  small positive floats (finite through any network, valid as second
  moments), ones for integers; leaves that are not shapes pass as they
  are. Step costs do not depend on the values."""
  leaves, treedef = jax.tree.flatten(shapes)
  out = []
  for i, leaf in enumerate(leaves):
    if not isinstance(leaf, jax.ShapeDtypeStruct):
      out.append(leaf)
    elif jnp.issubdtype(leaf.dtype, jnp.floating):
      # numpy, not jax.random: that compiles a sampler per distinct shape
      # (seconds on CPU for a network's worth of shapes).
      out.append(jnp.asarray(np.random.default_rng(i).uniform(
          0.005, 0.02, leaf.shape).astype(np.float32), leaf.dtype))
    else:
      out.append(jnp.asarray(np.ones(leaf.shape), leaf.dtype))
  return jax.tree.unflatten(treedef, out)
