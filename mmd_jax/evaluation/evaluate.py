"""The `evaluate` stage: sample every trained model at its step counts, score
against real data, and write the report with its pictures."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmd_jax.workdir import fs
from mmd_jax.evaluation import (caption_pictures, cycle, fid, plots,
                                 precision_recall, references, report,
                                 toy_metrics, train_seeds)
from mmd_jax.evaluation.digits_classifier import DigitsClassifier
from mmd_jax.device.timing import fmt_duration


@functools.lru_cache(maxsize=64)
def draw_fn(draw, steps: int, sampler: str, shape, guidance: float = 0.0):
  """`(params, key, labels) -> samples` of `shape`, jitted once per setting:
  periodic quality and `--mode=eval` call `generate` many times with the
  same sampler, and a fresh jit each call would recompile each time. `draw`
  compares by value, so jobs that sample alike share the program."""
  shape = tuple(shape)

  @jax.jit  # params as an argument: closed-over arrays become constants
  def fn(params, key, labels):
    return draw(params, key, shape, labels, steps, sampler, guidance)

  return fn


def generate(draw, params, key, n: int, steps: int, sampler: str,
             batch_size: int, shape, conditions=0,
             guidance: float = 0.0, decode=None, quantize: bool = False,
             progress_every_s: float = 30.0, nonfinite: list | None = None):
  """(n samples, their condition ids or None). `conditions`: a
  cycle.ConditionCycle, or a number of classes (labels cycle 0..C-1).

  `draw(params, key, shape, labels, steps, sampler, guidance)` is a job's
  sampler (stages/base.py's `Sampling.draw`). `decode` maps each batch to
  data space (a latent run's decoder). `quantize` returns uint8 images in
  [0, 255], as the standard FID protocol scores them (and 4x smaller to
  hold: 50k ImageNet-128 samples are 2.4 GB). Long runs log progress lines
  (count, samples/s, ETA) every `progress_every_s` seconds. `nonfinite`
  (a list) gets the number of samples holding NaN or inf, counted before
  quantisation would hide them.
  """
  shape = tuple(shape)
  if not isinstance(conditions, cycle.ConditionCycle):
    conditions = cycle.ConditionCycle(int(conditions))
  labels_all = conditions.ids_for(n)
  fn = draw_fn(draw, steps, sampler, (batch_size,) + shape, guidance)
  out = []
  t0, last_log = time.time(), time.time()
  for i in range(0, n, batch_size):
    lab = None if labels_all is None else conditions.batch(
        np.resize(labels_all[i:i + batch_size], batch_size))
    x = np.asarray(fn(params, jax.random.fold_in(key, i), lab))
    if decode is not None:
      x = np.asarray(decode(x))
    if nonfinite is not None:
      nonfinite.append(nonfinite_rows(x[:max(0, min(batch_size, n - i))]))
    if quantize:
      x = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    out.append(x)
    done = min(i + batch_size, n)
    if time.time() - last_log > progress_every_s and done < n:
      rate = done / (time.time() - t0)
      logging.info('  sampling %d/%d (%.0f%%) | %.1f samples/s | ETA %s',
                   done, n, 100.0 * done / n, rate,
                   fmt_duration((n - done) / max(rate, 1e-9)))
      last_log = time.time()
  return np.concatenate(out)[:n], labels_all


def nonfinite_rows(x) -> int:
  """How many examples (rows) of `x` hold NaN or inf (0 for integers)."""
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    return 0
  return int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))


def seed_keys(seed: int, num_seeds: int) -> list:
  """Evaluation keys: the first is PRNGKey(seed) (one seed scores as it
  always has), the others independent of it."""
  base = jax.random.PRNGKey(seed)
  return [base] + [jax.random.fold_in(base, i) for i in range(1, num_seeds)]


def mean_and_std(per_seed: list) -> tuple:
  """(mean of each metric, sample standard deviation or None for one
  seed) over a list of metric dicts."""
  names = [m for m in per_seed[0] if all(m in d for d in per_seed)]
  vals = {m: np.array([float(d[m]) for d in per_seed]) for m in names}
  mean = {m: float(v.mean()) for m, v in vals.items()}
  if len(per_seed) < 2:
    return mean, None
  return mean, {m: float(v.std(ddof=1)) for m, v in vals.items()}


class Scorer:
  """Scores samples against the real reference set, per dataset kind."""

  def __init__(self, config, dataset, workdir):
    self.dataset = dataset
    self.config = config
    n = config.eval.num_samples
    self.inception = None
    if not getattr(dataset, 'has_examples', True):   # prompts only
      self.real, self.reference = None, {}
      self.extra = {'prompts_only': 'no examples to score against; rows '
                    'show sample statistics only'}
    elif dataset.kind in ('points', 'arrays'):
      real_a, self.real = dataset.reference_sets(n, config.eval.seed)
      self.extra = {}
      ids_a = None
      if dataset.captions is not None:
        real_a, ids_a, self.caption_refs = references.caption_references(
            dataset, n, config.eval.seed)
        if dataset.captioned is None:   # a file: its other half, disjoint
          self.real = references.subset(np.concatenate(self.caption_refs),
                                        n, config.eval.seed)
      self.reference = self._score(real_a, ids_a)
    elif dataset.kind == 'images':
      self._init_images(workdir, dataset)
    else:
      self.clf = DigitsClassifier.load_or_train(
          os.path.join(workdir, 'evaluate'), dataset.train, dataset.test,
          config.eval.classifier_steps, config.seed)
      logging.info('digits classifier test accuracy %.4f',
                   self.clf.test_accuracy)
      self.real = dataset.test['x']
      real_logits, self.real_feats = self.clf.logits_and_features(self.real)
      _, train_feats = self.clf.logits_and_features(dataset.train['x'])
      self.reference = {
          'fd': fid.frechet_distance_features(train_feats, self.real_feats),
          'class_accuracy': self.clf.test_accuracy,
          **self._pr(train_feats)}
      if dataset.captioned is not None:   # real test images, own captions
        self.reference.update(dataset.captioned.accuracy(
            self.real, dataset.test['caption_id'],
            np.argmax(real_logits, -1)))
      self.extra = {'classifier': {'test_accuracy': self.clf.test_accuracy}}
      self._init_inception(workdir, dataset)

  def _make_inception(self):
    from mmd_jax.device import parallel
    from mmd_jax.evaluation import inception_metrics as im
    cfg = self.config.eval
    self.inception = im.InceptionMetrics(
        cfg.inception_weights, parallel.make_mesh(self.config.mesh),
        cfg.inception_batch_size)

  def _init_images(self, workdir, dataset):
    """Inception space against reference statistics: an ADM .npz, or a tfds
    split's first `eval.num_reference` images (cached in W/evaluate). The
    reference row scores held-out real images (the eval split) as if they
    were samples: the noise floor of every metric."""
    from mmd_jax.data import images as images_lib
    from mmd_jax.evaluation import inception_metrics as im
    cfg = self.config.eval
    self._make_inception()
    spec = images_lib.IMAGE_DATASETS[dataset.name]
    split = cfg.fid_reference_split or spec.train_split
    ref_images = None
    if not cfg.fid_reference:
      source = dataset.train if split == spec.train_split else \
          images_lib.open_split(spec, split, self.config.data.tfds_data_dir)
      ref_images = images_lib.LazyImages(source, cfg.num_reference)
      logging.info('FID reference: %d images of %s split %r', len(ref_images),
                   dataset.name, split)
    self.inception_ref = im.reference_stats(
        self.inception, os.path.join(workdir, 'evaluate'),
        f'{dataset.name}/{split}', ref_images, cfg.fid_reference)
    self.real = None
    held_out = images_lib.LazyImages(dataset.test, cfg.num_samples)
    self.reference = im.score(self.inception, held_out, self.inception_ref,
                              cfg.pr_k, cfg.pr_num_samples)
    self.extra = {'fid_protocol': {
        'reference': cfg.fid_reference or f'{dataset.name}/{split}',
        'num_reference': None if cfg.fid_reference else len(ref_images),
        'num_samples': cfg.num_samples,
        'reference_row': f'{len(held_out)} images of {dataset.name}/'
                         f'{spec.eval_split}'}}

  def _init_inception(self, workdir, dataset):
    """FID and Inception Score as well, when Inception weights are given."""
    cfg = self.config.eval
    if not cfg.inception_weights:
      return
    from mmd_jax.evaluation import inception_metrics as im
    self._make_inception()
    self.inception_ref = im.reference_stats(
        self.inception, os.path.join(workdir, 'evaluate'), dataset.name,
        self.real, cfg.fid_reference)
    ref = im.score(self.inception, dataset.train['x'], self.inception_ref)
    self.reference.update(fid=ref['fid'],
                          inception_score=ref['inception_score'])

  def score(self, samples, labels=None, nonfinite: int | None = None
            ) -> dict:
    """The metrics of `samples`; NaN for every metric, and the fraction in
    `nonfinite_fraction`, when any sample is not finite (`nonfinite`: how
    many were, as `generate` counted them before quantisation; None: count
    them here)."""
    if nonfinite is None:
      nonfinite = nonfinite_rows(samples)
    if nonfinite:
      return self.nonfinite(nonfinite / len(samples))
    return self._score(samples, labels)

  def nonfinite(self, fraction: float) -> dict:
    """No score from samples some of which are NaN or inf: NaN for each."""
    out = {k: float('nan') for k, v in getattr(self, 'reference', {}).items()
           if isinstance(v, (int, float))}
    out['nonfinite_fraction'] = float(fraction)
    return out

  def _score(self, samples, labels=None) -> dict:
    cfg = self.config.eval
    if self.real is None and self.dataset.kind in ('points', 'arrays'):
      return {'sample_mean': float(np.mean(samples)),
              'sample_std': float(np.std(samples))}
    if self.dataset.kind == 'arrays':
      return {'fd_raw': references.fd_raw(samples, self.real)}
    if self.dataset.kind == 'points':
      out = toy_metrics.toy_metrics(samples, self.real, self.dataset.mixture,
                                    tuple(cfg.mmd_bandwidths))
      if self.dataset.captions is not None and labels is not None:
        out.update(toy_metrics.caption_metrics(
            samples, labels, self.caption_refs, self.dataset.captioned))
      return out
    if self.dataset.kind == 'images':
      from mmd_jax.evaluation import inception_metrics as im
      return im.score(self.inception, samples, self.inception_ref, cfg.pr_k,
                      cfg.pr_num_samples)
    logits, feats = self.clf.logits_and_features(samples)
    out = {'fd': fid.frechet_distance_features(feats, self.real_feats)}
    if labels is not None and self.dataset.captioned is not None:
      out.update(self.dataset.captioned.accuracy(samples, labels,
                                                 np.argmax(logits, -1)))
    elif labels is not None:
      out['class_accuracy'] = float(np.mean(np.argmax(logits, -1) == labels))
    out.update(self._pr(feats))
    if self.inception is not None:
      from mmd_jax.evaluation import inception_metrics as im
      inc = im.score(self.inception, samples, self.inception_ref)
      out.update(fid=inc['fid'], inception_score=inc['inception_score'])
    return out

  def _pr(self, feats):
    """k-NN radii shrink as a set grows, so precision/recall compare equal
    sized sets: a fixed subsample of `feats` as large as the real set."""
    n = len(self.real_feats)
    idx = np.random.default_rng(0).permutation(len(feats))[:n]
    return precision_recall.precision_recall(self.real_feats, feats[idx],
                                             self.config.eval.pr_k)


@dataclasses.dataclass
class Entry:
  """One report row to produce: a trained model's params sampled one way."""
  model: str          # the row's model
  sampler: str        # the row's sampler: 'ancestral', 'ddim', or 'student'
                      # (a k-step student or generator at its own k)
  steps: int
  draw: object        # (params, key, shape, labels, steps, sampler, guidance)
  params: object
  shape: tuple        # what draw returns per example (latents in latent runs)
  conditions: object = 0            # cycle.ConditionCycle or classes
  draw_sampler: str = 'ancestral'   # the sampler draw is called with
  guidance: float = 0.0
  decode: object = None             # to data space
  train_seconds_per_step: float | None = None
  setting: dict | None = None       # hyperparameters shown beside the row
  cost: dict | None = None          # costs.job_cost of a trained student
  train_seed: int | None = None     # the copy of config.train_seeds


def run(config, workdir: str, dataset, entries, extra_rows=(),
        extra_images=None):
  """Samples and scores every entry against `dataset` (the data in data
  space) and writes the report; `extra_rows` (already scored, e.g. a VAE's)
  come first, `extra_images` are linked."""
  out_dir = os.path.join(workdir, 'evaluate')
  fs.makedirs(out_dir)
  scorer = Scorer(config, dataset, workdir)
  rows, images, panels = list(extra_rows), dict(extra_images or {}), {}
  real = scorer.real if dataset.kind == 'points' else None
  captioned = {}   # per-caption pictures: a stem's last step count
  # Common random numbers: within one seed every model and every k starts
  # from the same noise, so differences between rows are paired comparisons
  # rather than differences between seeds. On toy2d the initial noise
  # decides most samples' modes, and unpaired seeds moved the 4000-sample ED
  # by +-0.0008. Seeds past the first repeat the whole set with independent
  # noise: rows report the mean and the standard deviation over seeds.
  keys = seed_keys(config.eval.seed, config.eval.get('num_seeds', 1))
  for e in entries:
    per_seed, gen_s, first = _sample_and_score(config, scorer, e, keys)
    rows.append(_row(e, per_seed, gen_s))
    if e.train_seed:   # pictures show the first training seed's copy
      continue
    # One picture per model (the first seed's samples): a many-step model's
    # across its step counts (one per sampler), a student's (or
    # generator's) at its own k.
    if e.sampler == 'student':
      stem, title = f'{e.model}_k{e.steps}', f'{e.model} samples (k={e.steps})'
    else:
      stem, title = f'{e.model}_{e.sampler}', f'{e.model} samples ({e.sampler})'
    stem = re.sub(r'[^A-Za-z0-9.=-]+', '_', stem).strip('_')
    panels.setdefault((stem, title), []).append(
        (f'{e.model} {e.sampler} k={e.steps}', first[:1000]))
    if jax.process_index() == 0:
      captioned[stem] = caption_pictures.for_entry(
          dataset, e.conditions, first[:2000], workdir, stem,
          f'{e.model} k={e.steps}', real)
  for (stem, title), pan in panels.items():
    fname = f'samples_{stem}.png'
    if jax.process_index() == 0:
      plots.save_panel(pan, os.path.join(workdir, fname), real=real)
    images[title] = fname
  images.update(c for c in captioned.values() if c)

  metric = report.PRIMARY_METRIC[dataset.kind]
  rows = train_seeds.merge(rows)
  rep = {'dataset': dataset.name, 'reference': scorer.reference, 'rows': rows,
         **scorer.extra}
  if jax.process_index() == 0:
    _write_report(workdir, rep, images, metric)
  return rep


def _sample_and_score(config, scorer: Scorer, e: Entry, keys):
  """(metrics per seed, seconds to sample per seed, the first seed's
  samples) of entry `e`."""
  per_seed, gen_s = [], []
  for i, key in enumerate(keys):
    t0, bad = time.time(), []
    samples, labels = generate(
        e.draw, e.params, key, config.eval.num_samples, e.steps,
        e.draw_sampler, config.eval.batch_size, e.shape, e.conditions,
        e.guidance, decode=e.decode,
        quantize=scorer.dataset.kind == 'images', nonfinite=bad)
    gen_s.append(time.time() - t0)
    per_seed.append(scorer.score(samples, labels, sum(bad)))
    if i == 0:
      first = samples
  if any('nonfinite_fraction' in m for m in per_seed):   # in every seed
    per_seed = [dict(m, nonfinite_fraction=m.get('nonfinite_fraction', 0.0))
                for m in per_seed]
  return per_seed, gen_s, first


def _row(e: Entry, per_seed: list, gen_s: list) -> dict:
  """The report row of entry `e`: the mean over seeds, and their standard
  deviation when there are several."""
  num_seeds = len(per_seed)
  metrics, std = mean_and_std(per_seed)
  logging.info('evaluate %s%s %s k=%d: %s (%.1fs to sample, %d seed%s)',
               e.model, '' if e.train_seed is None else
               f' (training seed {e.train_seed})', e.sampler, e.steps,
               {m: round(v, 5) for m, v in metrics.items()}, sum(gen_s),
               num_seeds, 's' if num_seeds > 1 else '')
  row = {'model': e.model, 'sampler': e.sampler, 'steps': int(e.steps),
         'metrics': metrics, 'sample_seconds': round(gen_s[0], 3)}
  if std is not None:
    row['metrics_std'] = std
    row['num_seeds'] = num_seeds
  if e.train_seconds_per_step is not None:
    row['train_seconds_per_step'] = round(e.train_seconds_per_step, 5)
  if e.cost is not None:
    row['cost'] = e.cost
  if e.setting is not None:
    row['setting'] = e.setting
  if e.train_seed is not None:
    row['train_seed'] = e.train_seed
  return row


def _write_report(workdir: str, rep: dict, images: dict, metric: str):
  """The quality-vs-steps and leaderboard plots, then the report linking
  them before `images`."""
  reference = rep['reference'].get(metric)
  plots.quality_vs_steps(rep['rows'], metric, reference,
                         os.path.join(workdir, 'quality_vs_steps.png'))
  pictures = {f'{metric} vs sampling steps': 'quality_vs_steps.png'}
  if plots.leaderboard(rep['rows'], metric, reference,
                       os.path.join(workdir, 'leaderboard.png')):
    pictures[f'leaderboard: {metric} of the students against k'] = (
        'leaderboard.png')
  report.write_report(workdir, rep, {**pictures, **images}, metric)
