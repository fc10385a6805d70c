"""The generic training loop: jit once, log, checkpoint, preview, resume.

The loop owns everything that is not math: the step function it runs is
pure `(state, batch, key) -> (state, metrics)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from mmd_jax.errors import Error
from mmd_jax.workdir import checkpoint as ckpt_lib
from mmd_jax.workdir import fs
from mmd_jax.blocks import guard
from mmd_jax.device import parallel
from mmd_jax.loop.preemption import Preempted, SigtermFlag
from mmd_jax.device.timing import fmt_duration


class NonFiniteError(Error, RuntimeError):
  """Too many non-finite steps in a row; the message is the one line."""


class JsonlWriter:
  """metrics.jsonl: one JSON object per logged step (clu's scalar-writer
  calls, so it sits beside clu's TensorBoard writer)."""

  def __init__(self, path: str):
    self._f = fs.AppendLog(path)

  def write_scalars(self, step, scalars):
    rec = {'step': int(step)}
    rec.update({k: float(v) for k, v in scalars.items()})
    self._f.write(json.dumps(rec) + '\n')   # flushed: monitors follow it

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()


class _Writers:
  """The run's scalar writers as one."""

  def __init__(self, writers):
    self._writers = writers

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def flush(self):
    for w in self._writers:
      w.flush()


@dataclasses.dataclass
class Loop:
  """What the loop runs for one job: its step, init and directory."""
  name: str
  stage_dir: str
  num_steps: int
  init: Callable[[jax.Array, Any, Any], Any]   # (key, batch, frozen) -> state
  step: Callable[[Any, Any, jax.Array], Any]   # pure step function
  rng: Callable[[Any], jax.Array]              # state -> base key
  meta: dict                                   # saved beside checkpoints
  preview: Optional[Callable[[Any, str], None]] = None  # (state, path)
  # Read-only inputs (teacher params, preconditioner): passed to `init` as
  # jit arguments (not baked in as constants), saved once under
  # `stage_dir/frozen`, and left out of the periodic checkpoints.
  frozen: Any = None
  frozen_fields: tuple = ()
  # Periodic quality (e.g. FID-50k every 5k steps): state -> {metric: value},
  # logged under eval/ every `quality_every` steps (0: never).
  quality: Optional[Callable[[Any], dict]] = None
  quality_every: int = 0
  matmul_precision: str = 'default'   # config.matmul_precision
  # Called once the state is built or restored, before anything is
  # written: the runner saves the config files then.
  on_start: Optional[Callable[[], None]] = None

  def strip(self, state):
    return state.replace(**{f: None for f in self.frozen_fields}) \
        if self.frozen_fields else state


def _finite_metrics(metrics: dict) -> dict:
  return {k: float(v) for k, v in metrics.items()}


def build_state(loop: Loop, seed_key, stream, mesh):
  """Initialises the state directly onto its shardings."""
  batch = stream.global_batch_at(0, parallel.batch_sharding(mesh))
  abstract = jax.eval_shape(loop.init, seed_key, batch, loop.frozen)
  shardings = parallel.state_sharding(mesh, abstract)
  state = jax.jit(loop.init, out_shardings=shardings)(seed_key, batch,
                                                       loop.frozen)
  return state, shardings


def jit_step(loop: Loop, shardings, mesh, max_nonfinite_steps: int = 10):
  """The step as the loop runs it (and `bench` times it): guarded, with the
  state donated and every input and output placed by `parallel`.

  `(state, batch, key, counts) -> (state, metrics, counts)`.
  """
  batch_sh = parallel.batch_sharding(mesh)
  rep = parallel.replicated(mesh)
  return parallel.jit(guard.wrap(loop.step, max_nonfinite_steps), mesh,
                      in_shardings=(shardings, batch_sh, rep, rep),
                      out_shardings=(shardings, rep, rep),
                      donate_argnums=(0,), precision=loop.matmul_precision)


def run(loop: Loop, stream, mesh, seed_key, checkpoint_cfg, log_cfg,
        max_nonfinite_steps: int = 10):
  """Trains `loop` to `num_steps`, resuming from its latest checkpoint.
  Returns (state, the finished stage.json record)."""
  is_main = jax.process_index() == 0
  fs.makedirs(loop.stage_dir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(loop.stage_dir, 'checkpoints'),
                               checkpoint_cfg.every_steps, checkpoint_cfg.keep)
  state, shardings, start = _start(loop, stream, mesh, seed_key, ckpt)
  if loop.on_start:
    loop.on_start()
  meta = dict(loop.meta, finished_step=None)
  if is_main:
    _write_json(os.path.join(loop.stage_dir, 'stage.json'), meta)
  step_fn = jit_step(loop, shardings, mesh, max_nonfinite_steps)
  counts = jax.device_put(guard.init_counts(), parallel.replicated(mesh))
  tb, writer, progress = _writers(loop, log_cfg, is_main)
  # A host copy: the state (and its rng buffer) is donated to each step.
  key = np.asarray(jax.device_get(loop.rng(state)))
  wall0 = time.time()
  with SigtermFlag() as sigterm:
    state, window_costs = _loop(
        loop, stream, ckpt, step_fn, state, key, counts, start,
        parallel.batch_sharding(mesh), progress, writer, tb, log_cfg, meta,
        _guard_check(loop, ckpt, max_nonfinite_steps), sigterm)
  ckpt.save(loop.num_steps, loop.strip(state), meta,
            force=ckpt.latest_step() != loop.num_steps)
  ckpt.close()
  writer.flush()
  meta = _finished_record(loop, meta, window_costs, wall0, start)
  if is_main:
    if loop.preview:
      loop.preview(state, os.path.join(loop.stage_dir, 'samples.png'))
    _write_json(os.path.join(loop.stage_dir, 'stage.json'), meta)
  return state, meta


def _start(loop: Loop, stream, mesh, seed_key, ckpt):
  """(state, shardings, first step): fresh, or from the latest readable
  checkpoint with the frozen inputs put back."""
  state, shardings = build_state(loop, seed_key, stream, mesh)
  if loop.frozen_fields:  # orbax saves are collective: every process calls
    _save_frozen(loop, state)
  restored, restored_step = ckpt.restore_latest_valid(loop.strip(state))
  if restored is None:
    return state, shardings, 0
  logging.info('%s: resuming at step %d of %d', loop.name,
               int(restored_step), loop.num_steps)
  return restored.replace(**{f: getattr(state, f)
                             for f in loop.frozen_fields}), shardings, int(
                                 restored_step)


def _guard_check(loop: Loop, ckpt, max_nonfinite_steps: int):
  """counts -> None, or NonFiniteError once the guard has tripped."""
  def check(counts):
    tripped = int(counts['tripped_at'])
    if tripped >= 0:
      ckpt.wait()
      last = ckpt.latest_step()
      raise NonFiniteError(
          f'{loop.name}: {max_nonfinite_steps} non-finite steps in a row '
          f'(loss, gradient or parameters) ending at step {tripped}; last '
          'good checkpoint: ' + (f'step {last} in {ckpt.directory}'
                                 if last is not None else 'none'))
  return check


def _writers(loop: Loop, log_cfg, is_main: bool):
  """(TensorBoard writer or None, all metric writers, progress action).
  Process 0 writes TensorBoard events and metrics.jsonl; every process logs
  its own progress line."""
  if not (is_main and log_cfg.get('tensorboard', True)):
    # clu's writers import TensorFlow (3 s a process); without TensorBoard
    # the loop's own log line carries steps/s and the ETA.
    writers = [JsonlWriter(os.path.join(loop.stage_dir, 'metrics.jsonl'))
               ] if is_main else []
    return None, _Writers(writers), lambda step, t: None
  from clu import metric_writers, periodic_actions
  tb = metric_writers.SummaryWriter(loop.stage_dir)
  # clu's progress action puts steps/s and uptime into TensorBoard only, so
  # that every metrics.jsonl record carries the loss.
  progress = periodic_actions.ReportProgress(
      num_train_steps=loop.num_steps, writer=tb,
      every_steps=log_cfg.every_steps)
  return tb, _Writers([tb, JsonlWriter(
      os.path.join(loop.stage_dir, 'metrics.jsonl'))]), progress


def _finished_record(loop: Loop, meta: dict, window_costs, wall0: float,
                     start: int) -> dict:
  meta = dict(meta, finished_step=loop.num_steps)
  if window_costs:
    steady = window_costs[1:] or window_costs
    meta['seconds_per_step'] = float(np.median(steady))
  # Training wall time, compile included; steps run before a resume are
  # counted at the steady rate (their process's wall time is not kept).
  meta['train_seconds'] = float(time.time() - wall0 + start * meta.get(
      'seconds_per_step', 0.0))
  return meta


def _loop(loop, stream, ckpt, step_fn, state, key, counts, start, batch_sh,
          progress, writer, tb, log_cfg, meta, check_guard, sigterm):
  """The steps from `start`; returns (state, seconds/step per log window)."""
  is_main = jax.process_index() == 0
  t0, last_logged = time.time(), start
  window_costs = []  # seconds/step per log window; the first holds the compile
  for step in range(start, loop.num_steps):
    batch = stream.global_batch_at(step, batch_sh)
    state, metrics, counts = step_fn(state, batch, key, counts)
    done = step + 1
    progress(done, time.time())
    poll = (done % log_cfg.every_steps == 0 or done == loop.num_steps or
            ckpt.due(done))
    if poll:
      check_guard(counts)   # before anything is logged as progress or saved
    if done % log_cfg.every_steps == 0 or done == loop.num_steps:
      scalars = _finite_metrics(jax.device_get(metrics))
      rate = (done - last_logged) / max(time.time() - t0, 1e-9)
      eta = (loop.num_steps - done) / max(rate, 1e-9)
      scalars['steps_per_sec'] = rate
      window_costs.append(1.0 / max(rate, 1e-9))
      writer.write_scalars(done, scalars)
      logging.info('%s step %d/%d (%.0f%%) %s | %.1f steps/s | ETA %s',
                   loop.name, done, loop.num_steps,
                   100.0 * done / loop.num_steps,
                   ' '.join(f'{k}={v:.4g}' for k, v in scalars.items()
                            if k != 'steps_per_sec'),
                   rate, fmt_duration(eta))
      t0, last_logged = time.time(), done
    # After the log line, so that the step a pre-emption stops at keeps it.
    if sigterm.agreed(poll) and done < loop.num_steps:
      check_guard(counts)
      ckpt.save(done, loop.strip(state), meta, force=True)
      ckpt.close()
      writer.flush()
      raise Preempted(loop.name, done)
    ckpt.save(done, loop.strip(state), meta)
    if (loop.quality and loop.quality_every and done != loop.num_steps
        and done % loop.quality_every == 0):
      quality = {f'eval/{k}': float(v) for k, v in loop.quality(state).items()}
      # TensorBoard and quality.jsonl: metrics.jsonl records are loss steps.
      if is_main:
        if tb:
          tb.write_scalars(done, quality)
        q = JsonlWriter(os.path.join(loop.stage_dir, 'quality.jsonl'))
        q.write_scalars(done, quality)
        q.close()
      logging.info('%s step %d quality: %s', loop.name, done,
                   ' '.join(f'{k}={v:.4g}' for k, v in quality.items()))
    if (log_cfg.sample_every_steps and done % log_cfg.sample_every_steps == 0
        and loop.preview and is_main and done != loop.num_steps):
      loop.preview(state, os.path.join(loop.stage_dir,
                                        f'samples_{done:07d}.png'))
  return state, window_costs


def save_finished(loop: Loop, state, meta: dict):
  """Writes `state` as the stage directory's final checkpoint and marks it
  finished (an imported teacher)."""
  fs.makedirs(loop.stage_dir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(loop.stage_dir, 'checkpoints'),
                               every_steps=0, asynchronous=False)
  ckpt.save(loop.num_steps, loop.strip(state), meta, force=True)
  ckpt.close()
  if jax.process_index() == 0:
    _write_json(os.path.join(loop.stage_dir, 'stage.json'),
                dict(meta, finished_step=loop.num_steps))


def _save_frozen(loop: Loop, state):
  """Writes the frozen inputs once per stage directory."""
  ckpt = ckpt_lib.Checkpointer(os.path.join(loop.stage_dir, 'frozen'),
                               every_steps=0, keep=1, asynchronous=False)
  if ckpt.latest_step() is None:
    ckpt.save(0, {f: getattr(state, f) for f in loop.frozen_fields},
              force=True)
  ckpt.close()


def restore_latest(loop: Loop, stream, mesh, seed_key, step=None):
  """Loads a stage directory's latest (or given) checkpoint without training.

  Frozen fields come back as None; `loop.frozen` may be abstract
  (ShapeDtypeStructs), so this needs no teacher values.
  """
  ckpt = ckpt_lib.Checkpointer(os.path.join(loop.stage_dir, 'checkpoints'),
                               every_steps=0, asynchronous=False)
  abstract = loop.strip(jax.eval_shape(
      loop.init, seed_key,
      stream.global_batch_at(0, parallel.batch_sharding(mesh)), loop.frozen))
  shardings = parallel.state_sharding(mesh, abstract)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {loop.stage_dir}')
  if step is not None and step not in ckpt.all_steps():
    raise FileNotFoundError(f'{loop.stage_dir} has no checkpoint at step '
                            f'{step}; it has steps {ckpt.all_steps()}')
  state = ckpt.restore(target, step)
  ckpt.close()
  return state


def _write_json(path, obj):
  fs.write_text(path, json.dumps(obj, indent=2))
