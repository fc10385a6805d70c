"""The only file that talks to orbax."""
from __future__ import annotations

import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Periodic, asynchronous saves of one stage state plus JSON metadata."""

  def __init__(self, directory: str, every_steps: int, keep: int = 3,
               asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=asynchronous,
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def restore_latest_valid(self, abstract_state):
    """(state, step) from the newest checkpoint that restores, or (None,
    None). An unreadable one is moved aside to `<dir>_corrupt/<step>-<time>`
    (kept, never deleted) with a warning, and the previous one is tried."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, step), step
      except Exception as e:  # orbax/tensorstore raise many types
        self._quarantine(step, e)
    return None, None

  def _quarantine(self, step: int, err: Exception):
    self.manager.wait_until_finished()
    dst = None
    if jax.process_index() == 0:
      dst = os.path.join(self.directory + '_corrupt',
                         f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'quarantine {self.directory} {step}')
    logging.warning('checkpoint %s step %d is unreadable (%s: %s); moved to '
                    '%s, falling back to the previous one', self.directory,
                    step, type(err).__name__, str(err)[:200], dst)
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state, meta: dict | None = None,
           force: bool = False) -> bool:
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    args = {'state': ocp.args.StandardSave(state)}
    if meta is not None:
      args['meta'] = ocp.args.JsonSave(meta)
    return self.manager.save(step, args=ocp.args.Composite(**args),
                             force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto the shardings that `abstract_state` carries."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    logging.info('restored %s at step %d', self.directory, step)
    return out['state']

  def restore_meta(self, step: int | None = None):
    step = self.latest_step() if step is None else step
    out = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
