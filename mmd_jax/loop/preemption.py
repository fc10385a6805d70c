"""Pre-emption: SIGTERM becomes a flag that the training loop polls between
steps; the loop then saves and raises `Preempted` (main exits 143)."""
from __future__ import annotations

import jax
import numpy as np

from mmd_jax import errors


class Preempted(errors.Preempted):
  """SIGTERM: the state was saved at `step`; re-running resumes there."""

  def __init__(self, stage: str, step: int):
    super().__init__(f'{stage}: pre-empted (SIGTERM) at step {step}; '
                     'checkpoint saved, re-run the same command to resume')
    self.step = step


class SigtermFlag:
  """Turns SIGTERM into a flag the loop polls between steps (a handler must
  not save: it may interrupt a half-finished step)."""

  def __init__(self):
    self.raised = False
    self._old = None

  def __enter__(self):
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    import signal
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def agreed(self, poll: bool) -> bool:
    """Single process: the local flag. Several: every process must stop at
    the same step (the save is collective), so the flags are combined at
    `poll` steps only (log and checkpoint steps), not every step."""
    if jax.process_count() == 1:
      return self.raised
    if not poll:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.raised))
    return bool(np.any(flags))
