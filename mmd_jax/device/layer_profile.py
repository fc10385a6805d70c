"""Where a model's training step spends its time, layer type by layer type.

  python -m mmd_jax.device.layer_profile --config=configs/digits.py \
      --config.model.name=unet [--batch_size=0 --reps=10]

It traces one forward pass of the config's network (abstractly, no compute),
records every Conv, Dense, normalisation and attention call with its input
shapes, then times each distinct layer alone, forward plus backward with
respect to its parameters and inputs, at the step's batch. Per layer type it
prints the calls, the summed time, the share of the whole network's
forward+backward, FLOP/s and that rate as a fraction of the same process's
measured matmul peak. What no listed layer accounts for (elementwise ops,
concatenation, resizing, fusion boundaries) is the "other" row.

This is the profile behind the bench's MFU figure: a network whose convs run
at a third of the matmul rate cannot reach half of it as a whole.
"""
from __future__ import annotations

import collections
import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', 0,
                              'Batch (0: the teacher batch size).')
_REPS = flags.DEFINE_integer('reps', 10, 'Timed repetitions per layer.')
_OUTPUT = flags.DEFINE_string('output', '', 'Optional JSON output file.')


def _kind(module) -> str | None:
  import flax.linen as nn
  from mmd_jax.models import layers
  if isinstance(module, nn.MultiHeadDotProductAttention):
    return 'attention (with q/k/v/out projections)'
  if isinstance(module, nn.Conv):
    k = 'x'.join(map(str, module.kernel_size))
    return f'conv {k}' + (' strided' if module.strides not in (None, 1, (1, 1))
                          else '')
  if isinstance(module, (nn.Dense, nn.DenseGeneral)):
    return 'dense'
  if isinstance(module, (nn.GroupNorm, layers.GroupNorm)):
    return 'groupnorm'
  if isinstance(module, nn.LayerNorm):
    return 'layernorm'
  return None


def _unbound(module):
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ('parent', 'name')}
  return type(module)(**fields)


def record_layers(model, *args):
  """The (kind, unbound module, input ShapeDtypeStructs) of every profiled
  layer call in model.apply(*args), outermost profiled layer only."""
  import flax.linen as nn
  import jax
  calls, depth = [], [0]

  def interceptor(next_fun, a, kw, context):
    kind = _kind(context.module) if context.method_name == '__call__' else None
    if kind is None or depth[0]:
      return next_fun(*a, **kw)
    calls.append((kind, _unbound(context.module),
                  tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in a),
                  {k: v for k, v in kw.items() if isinstance(v, bool)}))
    depth[0] += 1
    try:
      return next_fun(*a, **kw)
    finally:
      depth[0] -= 1

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.apply(*args))
  return calls


def _fwd_bwd(apply_fn, params, inputs):
  """Forward plus backward of sum(out * cotangent) w.r.t. params and inputs,
  the work one network pass costs inside a training step."""
  import jax
  import jax.numpy as jnp

  def loss(p, xs):
    out = apply_fn(p, *xs)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)))
  return jax.jit(jax.grad(loss, argnums=(0, 1))), (params, inputs)


def _time(fn, args, reps):
  import jax
  from mmd_jax.device.timing import median_seconds
  jax.block_until_ready(fn(*args))
  t, _ = median_seconds(lambda: jax.block_until_ready(fn(*args)), reps, 1)
  flops = fn.lower(*args).cost_analysis()
  if isinstance(flops, (list, tuple)):
    flops = flops[0] if flops else {}
  return t, float((flops or {}).get('flops', 0.0))


def profile(config, batch_size: int = 0, reps: int = 10) -> dict:
  import jax
  import jax.numpy as jnp
  from mmd_jax.run import config_check
  from mmd_jax.data import data_shape
  from mmd_jax.numerics.denoiser import spec_from_config
  from mmd_jax.device.timing import matmul_peak, peak_dtype

  config_check.validate(config)
  ds = data_shape(config.data)
  spec = spec_from_config(config, ds)
  model = spec.module
  b = batch_size or config.teacher.batch_size
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (b,) + tuple(ds.example_shape))
  lam = jnp.linspace(-5., 5., b)
  labels = (jnp.arange(b) % spec.num_classes if spec.num_classes
            else spec.example_cond(b))
  params = jax.jit(spec.init_params)(key, x[:1])
  peak = matmul_peak(peak_dtype(jax.default_backend()), (1024, 2048))

  whole_fn, whole_args = _fwd_bwd(
      lambda p, x: model.apply(p, x, lam, labels), params, (x,))
  whole_t, whole_flops = _time(whole_fn, whole_args, reps)
  logging.info('network fwd+bwd: %.2f ms, %.2f GFLOP', whole_t * 1e3,
               whole_flops / 1e9)

  rows = _time_layers(model, (params, x, lam, labels), key, reps)
  listed = _add_other_and_rates(rows, whole_t, whole_flops,
                                peak['flops_per_s'])
  return {'model': config.model.name, 'data': ds.name, 'batch_size': b,
          'peak_matmul_flops': peak['flops_per_s'],
          'listed_share': listed / whole_t,
          'network_fwd_bwd': {'seconds': whole_t, 'flops': whole_flops,
                              'fraction_of_peak': whole_flops / whole_t
                              / peak['flops_per_s']},
          'layers': dict(sorted(rows.items(),
                                key=lambda kv: -kv[1]['seconds']))}


def _time_layers(model, args, key, reps: int) -> dict:
  """{layer kind: summed calls, seconds, flops} over the layers
  model.apply(*args) calls, each distinct layer timed once alone."""
  import jax
  groups = collections.defaultdict(list)
  for kind, module, shapes, kw in record_layers(model, *args):
    groups[(kind, repr(module), shapes, tuple(sorted(kw.items())))].append(
        module)
  rows = collections.defaultdict(lambda: {'calls': 0, 'seconds': 0.0,
                                          'flops': 0.0})
  for (kind, _, shapes, kw), modules in groups.items():
    module, kw = modules[0], dict(kw)
    inputs = tuple(jax.random.normal(key, s.shape, s.dtype) for s in shapes)
    p = module.init(key, *inputs, **kw)
    fn, fn_args = _fwd_bwd(lambda p, *xs: module.apply(p, *xs, **kw), p,
                           inputs)
    t, fl = _time(fn, fn_args, reps)
    logging.info('%-40s x%d %s: %.2f ms, %.1f GFLOP/s', kind, len(modules),
                 [s.shape for s in shapes], t * 1e3, fl / max(t, 1e-12) / 1e9)
    r = rows[kind]
    r['calls'] += len(modules)
    r['seconds'] += t * len(modules)
    r['flops'] += fl * len(modules)
  return rows


def _add_other_and_rates(rows: dict, whole_t: float, whole_flops: float,
                         peak_flops_per_s: float) -> float:
  """Adds the "other" row and each row's share, FLOP/s and fraction of
  peak; returns the listed layers' summed seconds."""
  listed = sum(r['seconds'] for r in rows.values())
  # Layers timed alone can sum to more than the network: inside one program
  # XLA fuses across layer boundaries. Then "other" is empty and
  # `listed_share` > 1 says by how much.
  rows['other (elementwise, concat, resize, ...)'] = {
      'calls': 0, 'seconds': max(whole_t - listed, 0.0),
      'flops': max(whole_flops - sum(r['flops'] for r in rows.values()), 0.0)}
  for r in rows.values():
    r['share'] = r['seconds'] / whole_t
    r['flops_per_s'] = r['flops'] / r['seconds'] if r['seconds'] else 0.0
    r['fraction_of_peak'] = r['flops_per_s'] / peak_flops_per_s
  return listed


def format_table(r: dict) -> str:
  w = r['network_fwd_bwd']
  lines = [f"{r['data']} / {r['model']}, batch {r['batch_size']}: network "
           f"fwd+bwd {w['seconds'] * 1e3:.1f} ms, "
           f"{w['flops'] / w['seconds'] / 1e9:.1f} GFLOP/s = "
           f"{100 * w['fraction_of_peak']:.1f}% of the matmul peak "
           f"({r['peak_matmul_flops'] / 1e9:.1f} GFLOP/s)",
           f"{'layer':42s} {'calls':>5s} {'ms':>8s} {'share':>6s} "
           f"{'GFLOP/s':>8s} {'% peak':>7s}"]
  for kind, s in r['layers'].items():
    lines.append(f"{kind:42s} {s['calls']:5d} {s['seconds'] * 1e3:8.2f} "
                 f"{100 * s['share']:5.1f}% {s['flops_per_s'] / 1e9:8.1f} "
                 f"{100 * s['fraction_of_peak']:6.1f}%")
  lines.append(f"layers timed alone sum to {100 * r['listed_share']:.0f}% of "
               'the network time')
  return '\n'.join(lines)


def main(argv):
  del argv
  from mmd_jax.run import config_check
  try:
    result = profile(_CONFIG.value, _BATCH.value, _REPS.value)
  except config_check.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if _OUTPUT.value:
    from mmd_jax.run.cli import write_json
    write_json(_OUTPUT.value, result)
  print(format_table(result))


if __name__ == '__main__':
  from mmd_jax.run.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
