"""The run around the methods: config, workdir, mesh, the data, the network
(config.model's, or one a planned method brings) and the space the
diffusion models live in, from which each job's `Context` is made."""
from __future__ import annotations

import os
import zlib

import jax
import numpy as np

from mmd_jax.data import batches
from mmd_jax.numerics.denoiser import spec_from_config
from mmd_jax.numerics.space import IDENTITY
from mmd_jax.plugins.base import Context
from mmd_jax.run.checks import need


def stage_key(seed: int, name: str):
  """A stage directory's base key: the seed and the directory name only, so
  a job draws the same numbers whatever ran before it (crc32: distinct for
  anagram names, unlike a sum of character codes)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed),
                            np.uint32(zlib.crc32(name.encode())))


class Env:
  """See the module docstring. `space_of()`: the run's space, asked for
  only when an in-space job is opened (a latent run's comes from the
  artifact SPACE); None: the data themselves."""

  def __init__(self, config, workdir: str, mesh, data, plan=None,
               space_of=None):
    self.config, self.workdir, self.mesh, self.data = (config, workdir, mesh,
                                                       data)
    self.network = network_of(plan, data, workdir) if plan else None
    # Before any training: evaluation would only meet it at the end.
    need(not (self.network and not self.network.null_label and
              config.eval.guidance), 'eval.guidance',
         'this teacher has no null label (its class embedding covers only '
         'the data\'s classes), so classifier-free guidance cannot run; set '
         'it to 0')
    self._space_of = space_of if plan is not None and plan.latent else None
    self._in_space = None   # (space, dataset, spec), made on first use

  def _spaced(self):
    if self._in_space is None:
      space = self._space_of() if self._space_of else IDENTITY
      dataset = space.encode_dataset(self.data)
      self._in_space = (space, dataset,
                        spec_from_config(self.config, dataset, self.network))
    return self._in_space

  def stream(self, dataset, batch_size: int, salt: int):
    images = dataset.kind == 'images'
    return batches.BatchStream(
        dataset.batch_source(), batch_size, self.config.seed + salt,
        jax.process_index(), jax.process_count(),
        random_flip=images and self.config.data.random_flip, prefetch=images)

  def context(self, method) -> Context:
    """The job's view of the run: a method trained in the space sees the
    encoded data; one that defines the space (a VAE) sees the data."""
    if method.in_space:
      space, dataset, spec = self._spaced()
    else:
      space, dataset = IDENTITY, self.data
      spec = spec_from_config(self.config, self.data)
    return Context(self.workdir, self.mesh, self.data, dataset, spec, space,
                   self.stream)

  def stage_dir(self, job) -> str:
    return job.stage_dir or os.path.join(self.workdir, job.name)


def network_of(plan, data, workdir: str):
  """The network a planned method brings (an imported teacher), if any."""
  found = [n for n in (m.network(plan.view_of(m), data, workdir)
                       for m in plan.methods) if n is not None]
  return found[0] if found else None

