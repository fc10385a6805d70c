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

On a bucket (`gs://...`) there is no exclusive create: the lock is written
with a token and read back, so of two runs starting in the same instant
the one whose write landed last holds it and the other stops; its age is
the `refreshed` time the holder rewrites.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from mmd_jax.workdir import fs
from mmd_jax.workdir.stage_meta import WorkdirError

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
    return json.loads(fs.read_text(path))
  except (OSError, ValueError):
    return None   # vanished, or half-written: treat by its age alone


def _stale(path: str, holder, stale_seconds: float) -> bool:
  if holder and holder.get('host') == socket.gethostname():
    return not _alive(int(holder.get('pid', -1)))
  if not fs.is_local(path):
    return time.time() - float((holder or {}).get('refreshed', 0)) > (
        stale_seconds)
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
    self._me = {'host': socket.gethostname(), 'pid': os.getpid(),
                'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                'token': uuid.uuid4().hex}
    for _ in range(3):
      try:
        self._create()
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
          fs.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      except OSError as e:   # read-only storage, or not ours
        raise WorkdirError(
            f'workdir {os.path.dirname(self.path)} is not writable '
            f'({e.strerror or e}); point --workdir at writable '
            'storage') from None
      self._held = True
      self._thread = threading.Thread(target=self._refresh, daemon=True,
                                      name='workdir-lock')
      self._thread.start()
      return self
    raise WorkdirError(f'could not take {self.path}: other runs keep '
                       'taking it')

  def _create(self):
    """Creates the lock file or raises FileExistsError."""
    if fs.is_local(self.path):
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(fd, 'w') as f:
        json.dump(self._me, f)
      return
    if fs.exists(self.path):
      raise FileExistsError(self.path)
    self._write()
    if (_read(self.path) or {}).get('token') != self._me['token']:
      raise FileExistsError(self.path)   # another run's write landed last

  def _write(self):
    fs.write_text(self.path, json.dumps(dict(self._me, refreshed=time.time())))

  def _refresh(self):
    while not self._stop.wait(self.stale_seconds / 4):
      try:
        if fs.is_local(self.path):
          os.utime(self.path)
        else:
          self._write()
      except OSError:
        pass

  def release(self):
    self._stop.set()
    if self._held:
      self._held = False
      try:
        fs.remove(self.path)
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
    fs.makedirs(workdir)
  except OSError as e:
    raise WorkdirError(f'workdir {workdir} is not writable '
                       f'({e.strerror or e})') from None
  return WorkdirLock(workdir)
