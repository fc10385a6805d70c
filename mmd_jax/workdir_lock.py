"""One run per workdir: `W/run.lock` names the live run that holds it.

Two runs writing one workdir corrupt it (one run's keep-N cleanup deletes
the checkpoint the other is about to restore). So a run takes the lock
before it writes, a second run stops with one line naming the holder, and
the lock goes when the run ends, however it ends short of SIGKILL.

A lock whose holder is gone does not block: on the same host a dead pid
frees it at once; from another host (a shared or bucket filesystem) a lock
not refreshed for `stale_seconds` is taken over. The holder refreshes it
from a daemon thread every `stale_seconds / 4`.

Only process 0 of a multi-process run takes the lock: the others are the
same run.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from mmd_jax.stage_meta import WorkdirError

NAME = 'run.lock'
STALE_SECONDS = 300.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's live process
    return True
  return True


def _read(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None   # vanished, or half-written: treat by its age alone


def _stale(path: str, holder, stale_seconds: float) -> bool:
  if holder and holder.get('host') == socket.gethostname():
    return not _alive(int(holder.get('pid', -1)))
  try:
    age = time.time() - os.path.getmtime(path)
  except OSError:
    return True
  return age > stale_seconds


class WorkdirLock:
  """`with WorkdirLock(workdir): ...` or acquire()/release()."""

  def __init__(self, workdir: str, stale_seconds: float = STALE_SECONDS):
    self.path = os.path.join(workdir, NAME)
    self.stale_seconds = stale_seconds
    self._stop = threading.Event()
    self._thread = None
    self._held = False

  def acquire(self):
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if not _stale(self.path, holder, self.stale_seconds):
          who = (f"host {holder.get('host')}, pid {holder.get('pid')}, "
                 f"since {holder.get('started')}") if holder else 'unknown'
          raise WorkdirError(
              f'{os.path.dirname(self.path)} is in use by another run '
              f'({who}); wait for it, or remove {self.path} if that run is '
              'gone') from None
        try:   # a dead holder's lock: take it over
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self._held = True
      self._thread = threading.Thread(target=self._refresh, daemon=True,
                                      name='workdir-lock')
      self._thread.start()
      return self
    raise WorkdirError(f'could not take {self.path}: other runs keep '
                       'taking it')

  def _refresh(self):
    while not self._stop.wait(self.stale_seconds / 4):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self):
    self._stop.set()
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def holding(workdir: str):
  """The lock for this process's run: process 0 takes it, the others of a
  multi-process run share it."""
  import jax
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'workdir {workdir} is not writable '
                       f'({e.strerror or e})') from None
  return WorkdirLock(workdir)
