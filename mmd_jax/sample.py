"""Draw samples from a stage's checkpoint.

python -m mmd_jax.sample --workdir=W/<stage> --steps=K --num_samples=N \
    --seed=S --output=F.npz

Writes `samples` (float32, data space) and, for conditional models,
`labels` (class-conditional) or `caption_ids` (caption-conditional: rows of
the run's caption table; `--caption_ids=I,J,...` picks them, default: cycle
over all). `--guidance=W --negative_caption_id=J` (many-step models) puts
row J of the caption table in place of the null caption.
Any registered method's directory works: it samples the way the method says
(plugins/base.py, `Sampling`). Stages of a latent run are decoded to data
space.
The same seed gives the same samples, bit for bit, on the same machine.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from mmd_jax.errors import Error
from mmd_jax.run.cli import quiet_libraries
from mmd_jax.workdir import fs


def _define_flags():
  """Only when run as the command: `draw` is importable beside other CLIs."""
  flags.DEFINE_string('workdir', None, 'A stage directory, e.g. W/teacher.')
  flags.DEFINE_integer('steps', None, "Sampling steps; default: the stage's "
                       'own k (students) or 256 (a many-step teacher).')
  flags.DEFINE_integer('num_samples', 1000, 'Number of samples.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_string('output', None, 'Output .npz file.')
  flags.DEFINE_enum('sampler', 'ancestral', ['ancestral', 'ddim'], 'Sampler.')
  flags.DEFINE_float('guidance', 0.0, 'CFG weight (conditional models).')
  flags.DEFINE_integer('batch_size', 1000, 'Samples per device call.')
  flags.DEFINE_list('caption_ids', None, 'Caption-conditioned models: rows '
                    "of the run's caption table to cycle over (default: "
                    'all).')
  flags.DEFINE_integer('negative_caption_id', None, 'Caption-conditioned '
                       'many-step models with --guidance > 0: this row of '
                       'the caption table takes the place of the null '
                       '(empty) caption, as a negative prompt.')
  flags.mark_flags_as_required(['workdir', 'output'])


def _fail(msg):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


class SampleError(Error, ValueError):
  """The stage cannot be sampled as asked; the message is the one line."""


# Samples are held in memory and written as one .npz: refuse a request
# larger than this many bytes of float32 samples (8 GiB) up front.
MAX_SAMPLE_BYTES = 8 * 2**30


def _check_request(steps, num_samples, batch_size):
  for flag, v in (('num_samples', num_samples), ('batch_size', batch_size)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise SampleError(f'--{flag} must be an integer >= 1, got {v!r}')
  if steps is not None and (not isinstance(steps, int) or steps < 1):
    raise SampleError(f'--steps must be an integer >= 1, got {steps!r} (leave '
                      "it out for the stage's own k, or 256 for a many-step "
                      'model)')


def _caption_ids(ctx, caption_ids, flag='--caption_ids'):
  """The asked-for caption rows as ints, checked against the table."""
  if not caption_ids:
    return None
  if ctx.spec.captions is None:
    raise SampleError(f'{flag}: this model is not conditioned on '
                      'captions')
  k = len(ctx.dataset.captions)
  try:
    ids = [int(i) for i in caption_ids]
  except ValueError:
    raise SampleError(f'{flag}={",".join(caption_ids)}: expected '
                      'integers') from None
  bad = [i for i in ids if not 0 <= i < k]
  if bad:
    raise SampleError(f'{flag}: {bad[0]} is not a row of the caption '
                      f'table (0..{k - 1})')
  return ids


def _negative(ctx, sampling, negative_id, guidance):
  """The sampler with a negative caption in place of the null one."""
  if negative_id is None:
    return sampling.draw
  if ctx.spec.captions is None:
    raise SampleError('--negative_caption_id: this model is not conditioned '
                      'on captions')
  if not hasattr(sampling.draw, 'with_negative'):
    raise SampleError('--negative_caption_id: only many-step models sample '
                      'with guidance here')
  if not guidance:
    raise SampleError('--negative_caption_id: a negative caption acts '
                      'through classifier-free guidance; give --guidance > 0')
  row = _caption_ids(ctx, [str(negative_id)], '--negative_caption_id')[0]
  table = ctx.dataset.captions
  one = table.gather(np.asarray([row]))

  def negative(batch):
    import jax.numpy as jnp
    return {n: jnp.repeat(jnp.asarray(v), batch, 0) for n, v in one.items()}

  return sampling.draw.with_negative(negative)


def _check_stage(job, ctx, sampling, steps, num_samples, guidance):
  if sampling is None:
    raise SampleError(f'{job.name} ({job.method}) draws no samples')
  if not sampling.any_steps and steps is not None and steps != sampling.steps:
    raise SampleError(f'{job.name} samples with exactly '
                      f'{sampling.steps} step(s); --steps must be '
                      f'{sampling.steps}')
  if guidance and sampling.steps is not None:
    raise SampleError(f'--guidance={guidance:g}: {job.name} is a '
                      f'{sampling.steps}-step student; its guidance was '
                      'fixed when it was distilled (distill.guidance), so '
                      'leave --guidance at 0')
  if guidance and not ctx.spec.conditioned:
    raise SampleError(f'--guidance={guidance:g}: {job.name} is unconditional '
                      '(its data have no labels or captions), so '
                      'classifier-free guidance '
                      'has nothing to guide; leave it at 0')
  size = 4 * num_samples * int(np.prod(ctx.dataset.example_shape))
  if size > MAX_SAMPLE_BYTES:
    raise SampleError(
        f'--num_samples={num_samples}: {size / 2**30:.0f} GiB of samples, '
        f'more than the {MAX_SAMPLE_BYTES / 2**30:.0f} GiB held in memory '
        'and written in one file; draw them in several calls with '
        'different --seed')


def draw(stage_dir: str, steps=None, num_samples: int = 1000, seed: int = 0,
         sampler: str = 'ancestral', guidance: float = 0.0,
         batch_size: int = 1000, caption_ids=None, negative_caption_id=None):
  """(samples in data space, {'labels' or 'caption_ids': ids} or {}, k)
  from a stage directory of
  any registered method, sampled the way the method says
  (plugins/base.py's `Sampling`)."""
  import jax

  from mmd_jax.evaluation import cycle, evaluate
  from mmd_jax.run.stage_dir import open_stage

  _check_request(steps, num_samples, batch_size)
  stage = open_stage(stage_dir)
  ctx, sampling, state, job = (stage.ctx, stage.bound.sampling, stage.state,
                               stage.opened.job)
  _check_stage(job, ctx, sampling, steps, num_samples, guidance)
  conditions = cycle.of(ctx.spec, ctx.dataset,
                        _caption_ids(ctx, caption_ids))
  sampler_fn = _negative(ctx, sampling, negative_caption_id, guidance)
  # Students sample with their own k by default.
  k = steps or sampling.steps or 256
  samples, labels = evaluate.generate(
      sampler_fn, state.sampling_params, jax.random.PRNGKey(seed),
      num_samples, k, sampler, min(batch_size, num_samples),
      ctx.dataset.example_shape, conditions, guidance,
      decode=ctx.space.decode)
  ids = {} if labels is None else {
      'caption_ids' if ctx.spec.captions is not None else 'labels': labels}
  return np.asarray(samples, np.float32), ids, k


def main(argv):
  del argv
  quiet_libraries()
  f = flags.FLAGS
  try:
    samples, ids, k = draw(f.workdir, f.steps, f.num_samples, f.seed,
                           f.sampler, f.guidance, f.batch_size, f.caption_ids,
                           f.negative_caption_id)
  except Error as e:
    _fail(str(e))
  out = {'samples': samples, **ids}
  fs.makedirs(os.path.dirname(fs.absolute(f.output)))
  fs.save_npz(f.output, **out)
  print(f'wrote {len(samples)} samples (k={k}) to {f.output}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
