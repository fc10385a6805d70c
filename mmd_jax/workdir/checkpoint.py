"""The only file that talks to orbax."""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from mmd_jax.workdir import fs
from mmd_jax.workdir.stage_meta import WorkdirError

FULL_DISK_MARKERS = ('RESOURCE_EXHAUSTED', 'No space left', 'Disk quota exceeded',
         'File too large')


# What orbax/tensorstore say when a checkpoint's arrays do not fit the
# requested state (a changed config), as against a damaged checkpoint.
MISMATCH_MARKERS = ('is not compatible with the stored shape',
                    'tree structures do not match')


def _first_line(e) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _mismatch(directory, step, e) -> str:
  """The one line of a checkpoint that holds another state than the one
  this config and this version build."""
  return (f'{directory} step {step} holds a state of other shapes or fields '
          f'than this config builds ({_first_line(e)}): the config changed '
          'since it was trained, or another version of mmd_jax wrote it; use '
          'the config (config.json) and version it was trained with, or a '
          'new workdir')


class CheckpointMismatchError(WorkdirError):
  """A checkpoint holds another config's arrays; the message is the line."""


class ChecksumError(WorkdirError):
  """A restored array differs from the one saved (flipped bytes)."""


def _bits(x):
  """x's bytes as uint32 words (narrower types widened)."""
  import jax.numpy as jnp
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(
      x.dtype.itemsize, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _leaf_sum(x):
  """A position-weighted uint32 sum of one array: any flipped bit changes
  it (an odd weight times a power of two is never 0 mod 2^32). Jitted per
  array, so arrays of one shape share a compile across stages."""
  import jax.numpy as jnp
  b = _bits(x).reshape(-1)
  w = jnp.arange(b.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(b * w, dtype=jnp.uint32)


def checksums(tree) -> list[int]:
  """The per-array checksums saved with a checkpoint (`None` leaves, a
  state's stripped frozen fields, are not arrays)."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, 'dtype')]
  return [int(v) for v in jax.device_get([_leaf_sum(x) for x in leaves])]


class CheckpointWriteError(WorkdirError):
  """A save failed (typically a full disk); the message is the one line."""
  # The command exits straight after the line (os._exit): orbax's writer
  # threads would print tracebacks at interpreter exit.
  exit_at_once = True


def _silence_closed_loops():
  """After a failed async write, tensorstore's pending callbacks hit the
  closed event loop of orbax's writer and each report an unraisable
  RuntimeError, printed as a bare traceback; after a failed read, each
  abandoned array read does the same. The run reports either in its own
  line (CheckpointWriteError, the restore's warning), so those, and only
  those, are dropped. Installed once, with the first Checkpointer."""
  previous = sys.unraisablehook
  if getattr(previous, 'mmd_jax', False):
    return

  def hook(u):
    text = str(u.exc_value)
    closed_loop = (isinstance(u.exc_value, RuntimeError)
                   and 'Event loop is closed' in text)
    # The sibling reads of a damaged checkpoint, abandoned once the first
    # one failed: the restore's own warning names the checkpoint.
    abandoned_read = text.startswith(
        'Encountered error while reading array index')
    if not (closed_loop or abandoned_read):
      previous(u)
  hook.mmd_jax = True
  sys.unraisablehook = hook


class Checkpointer:
  """Periodic, asynchronous saves of one stage state plus JSON metadata."""

  def __init__(self, directory: str, every_steps: int, keep: int = 3,
               asynchronous: bool = True):
    self.directory = fs.absolute(directory)
    self.every_steps = every_steps
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=asynchronous,
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    _silence_closed_loops()

  def restore_latest_valid(self, abstract_state):
    """(state, step) from the newest checkpoint that restores, or (None,
    None) when there is none. An unreadable one is moved aside to
    `<dir>_corrupt/<step>-<time>` (kept, never deleted) with a warning, and
    the previous one is tried; when none is left, WorkdirError. A
    checkpoint of other shapes than `abstract_state` is a changed config,
    not damage: CheckpointMismatchError, nothing moved."""
    moved = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, step), step
      except Exception as e:  # orbax/tensorstore raise many types
        if isinstance(e, CheckpointMismatchError):
          raise
        self._quarantine(step, e)
        moved.append(step)
    corrupt = self.directory + '_corrupt'
    if moved or fs.isdir(corrupt) and fs.listdir(corrupt):
      # Also on the next run: training from 0 beside the moved checkpoints
      # would be a silent restart.
      held = f'steps {sorted(moved)} moved' if moved else 'moved earlier'
      raise WorkdirError(
          f'every checkpoint in {self.directory} is unreadable ({held} to '
          f'{corrupt}/); remove its stage directory to train it again from '
          'step 0')
    return None, None

  def _quarantine(self, step: int, err: Exception):
    self.manager.wait_until_finished()
    dst = None
    if jax.process_index() == 0:
      dst = os.path.join(self.directory + '_corrupt',
                         f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      fs.makedirs(os.path.dirname(dst))
      fs.move(os.path.join(self.directory, str(step)), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'quarantine {self.directory} {step}')
    logging.warning('checkpoint %s step %d is unreadable (%s: %s); moved to '
                    '%s, falling back to the previous one', self.directory,
                    step, type(err).__name__, str(err)[:200], dst)
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  @contextlib.contextmanager
  def _writing(self, step=None):
    """Turns a failed write, which orbax raises from its async writer as
    any of several types, into one line; removes the partial checkpoint so
    that the space comes back and the previous one stays the latest."""
    try:
      yield
    except CheckpointWriteError:
      raise
    except Exception as e:  # orbax/tensorstore raise many types
      full = (isinstance(e, OSError) and e.errno in (
          errno.ENOSPC, errno.EDQUOT, errno.EFBIG)) or any(
              s in str(e) for s in FULL_DISK_MARKERS)
      if not full and not isinstance(e, OSError):
        raise
      self._drop_partial()
      done = [int(n) for n in fs.listdir(self.directory) if n.isdigit()
              ] if fs.isdir(self.directory) else []
      last = (f'the last complete checkpoint is step {max(done)}'
              if done else 'no checkpoint was completed')
      why = 'the disk is full' if full else f'{type(e).__name__}: {e}'
      raise CheckpointWriteError(
          f'saving a checkpoint in {self.directory} failed: '
          f'{why.splitlines()[0][:200]}; {last}. Free space and re-run: '
          'the run resumes from it') from None

  def _drop_partial(self):
    if jax.process_index() != 0 or not fs.isdir(self.directory):
      return
    for name in fs.listdir(self.directory):
      if 'orbax-checkpoint-tmp' in name:
        fs.rmtree(os.path.join(self.directory, name))

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
    # Checksums of what is saved, checked on restore: orbax verifies the
    # files' structure, not their bytes.
    meta = dict(meta or {}, checksums=checksums(state))
    args = {'state': ocp.args.StandardSave(state),
            'meta': ocp.args.JsonSave(meta)}
    with self._writing():
      return self.manager.save(step, args=ocp.args.Composite(**args),
                               force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto the shardings that `abstract_state` carries."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))
    except ValueError as e:
      if not any(m in str(e) for m in MISMATCH_MARKERS):
        raise
      raise CheckpointMismatchError(_mismatch(self.directory, step, e)
                                    ) from None
    self._verify(out['state'], step)
    logging.info('restored %s at step %d', self.directory, step)
    return out['state']

  def _verify(self, state, step: int):
    """ChecksumError when the restored arrays are not the saved ones
    (checkpoints written before checksums pass unchecked)."""
    try:
      want = self.restore_meta(step).get('checksums')
    except Exception:  # no meta item: an older checkpoint
      return
    if want is None:
      return
    got = checksums(state)
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    if bad or len(got) != len(want):
      paths = [jax.tree_util.keystr(p) for p, x in
               jax.tree_util.tree_leaves_with_path(state) if hasattr(x, 'dtype')]
      raise ChecksumError(
          f'{self.directory} step {step} is damaged: {len(bad)} array(s) '
          f'differ from what was saved (first: '
          f'{paths[bad[0]] if bad else "their number"})')

  def restore_meta(self, step: int | None = None):
    step = self.latest_step() if step is None else step
    out = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out['meta']

  def wait(self):
    with self._writing():
      self.manager.wait_until_finished()

  def close(self):
    with self._writing():
      self.manager.wait_until_finished()
    self.manager.close()
