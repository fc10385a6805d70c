"""Workdir I/O through etils.epath, so that a workdir may be a bucket
(`gs://bucket/run`, as big_vision and t5x keep theirs) as well as a local
directory. Orbax writes checkpoints there itself; everything else the run
reads or writes under a workdir goes through here.

Paths stay plain strings: orbax, logs and error lines take them as they
are, and `os.path.join` keeps a `scheme://` prefix intact. Never call
`os.path.abspath` or `normpath` on one (they fold `gs://` into `gs:/`):
use `absolute`.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import time

from etils import epath

from mmd_jax.errors import Error


class UnreachableError(Error, OSError):
  """A bucket workdir that does not answer; the message is the one line.
  The probe's thread may still wait on the network, so the command exits
  at once."""
  exit_at_once = True


def is_local(p) -> bool:
  return '://' not in os.fspath(p)


def absolute(p) -> str:
  """An absolute local path, or a URL unchanged."""
  p = os.fspath(p)
  return os.path.abspath(p) if is_local(p) else p.rstrip('/')


def path(p) -> epath.Path:
  return epath.Path(os.fspath(p))


def check_reachable(p, timeout_s: float | None = None):
  """Asks a bucket workdir once whether it exists, before anything else
  touches it: without network or credentials the storage clients retry for
  minutes and then fail deep inside a read, with pages of traceback. Local
  paths are not probed. The wait is `timeout_s`, else the environment's
  MMD_JAX_BUCKET_TIMEOUT_S, else 30 s."""
  p = os.fspath(p)
  if is_local(p):
    return
  if timeout_s is None:
    timeout_s = float(os.environ.get('MMD_JAX_BUCKET_TIMEOUT_S', 30))
  answer = {}

  def probe():
    try:
      answer['exists'] = path(p).exists()
    except Exception as e:  # pylint: disable=broad-except
      answer['error'] = e
  with _stderr_kept_aside():   # the clients' own retry warnings
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
  if 'error' in answer:
    e = answer['error']
    first = (str(e).strip().splitlines() or [''])[0]
    raise UnreachableError(
        f'workdir {p} cannot be reached ({type(e).__name__}: {first}); check '
        'the network and the storage credentials')
  if 'exists' not in answer:
    raise UnreachableError(
        f'workdir {p} did not answer within {timeout_s:.0f} s; check the '
        'network and the storage credentials')


@contextlib.contextmanager
def _stderr_kept_aside():
  """File descriptor 2 goes to a scratch file for the duration: C++ storage
  clients (TensorFlow's, tensorstore's) log there directly."""
  import sys
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as scratch:
    os.dup2(scratch.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def isfile(p) -> bool:
  return path(p).is_file()


def makedirs(p):
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p) -> list[str]:
  return [c.name for c in path(p).iterdir()]


def remove(p):
  path(p).unlink()


def rmtree(p):
  """Removes a directory and what it holds; missing is fine."""
  q = path(p)
  if q.exists():
    q.rmtree()


def move(src, dst):
  """Moves a file or directory. On a bucket this is copy-then-delete
  (object stores have no rename); only used for rare recovery moves."""
  if is_local(src) and is_local(dst):
    shutil.move(src, dst)
    return
  path(src).rename(dst)


def read_text(p) -> str:
  return path(p).read_text()


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def open(p, mode: str = 'r'):   # pylint: disable=redefined-builtin
  return path(p).open(mode)


def write_text(p, text: str):
  """Writes the whole file at once: a reader sees the old file or the new
  one, never a part (local: a temporary file and `os.replace`; a bucket's
  single-object upload is atomic already)."""
  write_bytes(p, text.encode())


def write_bytes(p, data: bytes):
  p = os.fspath(p)
  if is_local(p):
    tmp = p + '.tmp'
    with io.open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, p)
  else:
    path(p).write_bytes(data)


def load_npz(p) -> dict:
  """An .npz's arrays, read whole (np.load needs a seekable file)."""
  import numpy as np
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def save_npz(p, **arrays):
  import numpy as np
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(p, buf.getvalue())


def save_figure(fig, p, **kw):
  buf = io.BytesIO()
  fig.savefig(buf, format=os.path.splitext(os.fspath(p))[1][1:] or 'png',
              **kw)
  write_bytes(p, buf.getvalue())


class AppendLog:
  """A text file that grows by lines (metrics.jsonl). Local: appended and
  flushed per line, so monitors can follow it. Object stores cannot
  append, so there the whole object is rewritten, at most every
  `every_s` seconds and on close."""

  def __init__(self, p, every_s: float = 30.0):
    self.path = os.fspath(p)
    self._local = is_local(self.path)
    if self._local:
      self._f = io.open(self.path, 'a')
    else:
      self._text = read_text(self.path) if exists(self.path) else ''
      self._every_s, self._last, self._dirty = every_s, 0.0, False

  def write(self, line: str):
    if self._local:
      self._f.write(line)
      self._f.flush()
      return
    self._text += line
    self._dirty = True
    if time.monotonic() - self._last >= self._every_s:
      self.flush()

  def flush(self):
    if self._local:
      self._f.flush()
    elif self._dirty:
      path(self.path).write_text(self._text)
      self._last, self._dirty = time.monotonic(), False

  def close(self):
    self.flush()
    if self._local:
      self._f.close()
