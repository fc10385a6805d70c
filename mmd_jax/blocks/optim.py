"""Adam with linear warm-up (and optional linear decay to 0).

Two flavours of schedule:
- `make_optimizer`: optax's usual one, read at the optimiser's own update
  count. Right for the teacher and the VAE, which update once per step.
- `global_step_adam`: the schedule read at the *global* step, passed to
  `update(..., global_step=n)`. A step that trains several networks
  (moment matching's student and auxiliary net on alternate steps, EMD's
  score net `score_updates` times per step) would otherwise run each
  network's schedule on its own count: with two alternating networks
  warm-up lasts twice as long and the rate ends at half its peak.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def schedule(learning_rate: float, warmup_steps: int, total_steps: int,
             decay: bool, end: int | None = None) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then constant, or with `decay` a
  linear fall that reaches 0 at step `end` (default `total_steps`)."""
  warmup_steps = max(int(warmup_steps), 1)
  end = total_steps if end is None else end
  if decay:
    tail = optax.linear_schedule(learning_rate, 0.0,
                                 max(end - warmup_steps, 1))
  else:
    tail = optax.constant_schedule(learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps), tail],
      [warmup_steps])


def _adam(grad_clip, b1, b2, eps):
  chain = []
  if grad_clip and grad_clip > 0:
    chain.append(optax.clip_by_global_norm(grad_clip))
  chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  return chain


def make_optimizer(learning_rate: float, warmup_steps: int, total_steps: int,
                   grad_clip: float, b1: float = 0.9, b2: float = 0.99,
                   eps: float = 1e-8, decay: bool = False):
  """(Adam after global-norm clipping, its schedule), on its own count."""
  lr = schedule(learning_rate, warmup_steps, total_steps, decay)
  chain = []
  if grad_clip and grad_clip > 0:
    chain.append(optax.clip_by_global_norm(grad_clip))
  chain.append(optax.adam(lr, b1=b1, b2=b2, eps=eps))
  return optax.chain(*chain), lr


class GlobalScheduleState(NamedTuple):
  learning_rate: jnp.ndarray   # the rate of the latest update, for logging


def scale_by_global_schedule(sched: optax.Schedule
                             ) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by -sched(global_step)."""

  def init(params):
    del params
    return GlobalScheduleState(jnp.zeros((), jnp.float32))

  def update(updates, state, params=None, *, global_step=None, **extra):
    del params, extra, state
    if global_step is None:
      raise ValueError('this optimiser reads its learning rate at the global '
                       'step: call update(..., global_step=step)')
    # Clipped at 0: under jit XLA divides by the decay length as a product
    # with its reciprocal, which lands a hair below 0 at the last step.
    rate = jnp.maximum(jnp.asarray(sched(global_step), jnp.float32), 0.0)
    return optax.tree.scale(-rate, updates), GlobalScheduleState(rate)

  return optax.GradientTransformationExtraArgs(init, update)


def global_step_adam(learning_rate: float, warmup_steps: int,
                     total_steps: int, grad_clip: float, b1: float, b2: float,
                     eps: float, decay: bool = True):
  """(tx, schedule): clipping, Adam, and warm-up then linear decay read at
  the global step; the rate is 0 at the last step, `total_steps - 1`
  (`decay=False`: constant after the warm-up)."""
  sched = schedule(learning_rate, warmup_steps, total_steps, decay,
                   end=total_steps - 1)
  tx = optax.chain(*_adam(grad_clip, b1, b2, eps),
                   scale_by_global_schedule(sched))
  return tx, sched


def update(tx, grads, opt_state, params, global_step):
  """(new params, new optimiser state, the rate applied) for any optax
  transformation: a global-step one reads `global_step`, others ignore it
  (their rate is reported as NaN)."""
  tx = optax.with_extra_args_support(tx)
  updates, opt_state = tx.update(grads, opt_state, params,
                                 global_step=global_step)
  rate = optax.tree_utils.tree_get(opt_state, 'learning_rate',
                                   jnp.full((), jnp.nan, jnp.float32))
  return optax.apply_updates(params, updates), opt_state, rate


def ema_update(ema, params, updates, decay: float, when=True):
  """(ema, updates) after one more update of `params` into the sampling
  EMA, which starts at zeros (`debiased_ema` divides the start out);
  unchanged where `when` is False."""
  new = optax.incremental_update(params, ema, 1.0 - decay)
  pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(when, x, y), a, b)
  return pick(new, ema), jnp.where(when, updates + 1, updates)


def debiased_ema(ema, updates, decay: float, fallback):
  """The bias-corrected EMA of `updates` updates, ema / (1 - decay^n),
  so that the zeros it starts from carry no weight; `fallback` (the
  online weights) before the first update."""
  scale = 1.0 / (1.0 - decay ** jnp.maximum(updates, 1).astype(jnp.float32))
  return jax.tree.map(lambda e, p: jnp.where(updates > 0, e * scale, p), ema,
                      fallback)
