"""Datasets plus metadata; batching lives in batches.py.

Small datasets are in-memory arrays; the tfds image datasets (images.py)
are random-access sources read batch by batch. Only this package imports
tfds.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from mmd_jax.data import captions as captions_lib
from mmd_jax.data import digits as digits_lib
from mmd_jax.data import digits_text
from mmd_jax.data import images as images_lib
from mmd_jax.data import points as points_lib
from mmd_jax.data import toy2d
from mmd_jax.data import toy2d_text
from mmd_jax.data.points import DataError

DATASETS = ('toy2d', 'toy2d_text', 'points', 'digits', 'digits_text') + tuple(images_lib.IMAGE_DATASETS)


@dataclasses.dataclass
class Dataset:
  name: str                      # e.g. 'toy2d/asymmetric_mixture'
  kind: str     # 'points' (low-dim), 'digits', 'images' (tfds, uint8 FID)
                # or 'arrays' (NHWC floats from a file: images or latents)
  train: object                  # {'x': (N, ...), 'label': (N,)?} or an
  test: Optional[object] = None  # images.ImageSource
  num_classes: int = 0
  mixture: Optional[toy2d.Mixture] = None
  # Caption conditioning: train (and test) then also hold 'caption_id'.
  captions: Optional[captions_lib.CaptionTable] = None
  # What each caption names, for exact caption metrics:
  # toy2d_text.CaptionedMixture or digits_text.CaptionedDigits.
  captioned: Optional[object] = None
  # A prompts-only caption file: no 'x'; the shape of an example is given.
  prompts_shape: Optional[tuple] = None

  @property
  def has_examples(self) -> bool:
    return self.prompts_shape is None

  @property
  def caption_signature(self):
    return None if self.captions is None else self.captions.signature()

  def batch_source(self):
    """What data/batches.py reads: with captions, batches gather their
    rows of the caption table as 'cond'."""
    if self.captions is None:
      return self.train
    return captions_lib.CaptionSource(self.train.get('x'),
                                      self.train['caption_id'], self.captions,
                                      self.example_shape)

  @property
  def example_shape(self):
    if self.prompts_shape is not None:
      return tuple(self.prompts_shape)
    if isinstance(self.train, images_lib.ImageSource):
      return self.train.example_shape
    return tuple(self.train['x'].shape[1:])

  @property
  def num_train(self):
    if isinstance(self.train, images_lib.ImageSource):
      return len(self.train)
    return int(self.train['caption_id' if self.prompts_shape is not None
                          else 'x'].shape[0])

  def reference_sets(self, n: int, seed: int):
    """Two independent sets of real data of size n, for noise floors."""
    rng = np.random.default_rng([seed, 7919])
    if self.mixture is not None:
      return self.mixture.sample(rng, n), self.mixture.sample(rng, n)
    x = self.train['x']
    m = min(n, len(x) // 2)
    perm = rng.permutation(len(x))
    return x[perm[:m]], x[perm[m:2 * m]]


@dataclasses.dataclass
class DataShape:
  """What a Dataset says about its examples, without the data: enough to
  build, describe or bench a stage."""
  name: str
  kind: str
  example_shape: tuple
  num_classes: int
  caption_signature: object = None   # numerics.condition.Captions
  has_examples: bool = True          # False: a prompts-only caption file


def data_shape(data_cfg) -> DataShape:
  """The shape of what `load_dataset(data_cfg)` would load, reading
  nothing but a points file's header."""
  name = data_cfg.name
  if name == 'toy2d':
    return DataShape(f'toy2d/{data_cfg.toy_name}', 'points', (2,), 0)
  if name == 'toy2d_text':
    return DataShape('toy2d_text/ring8', 'points', (2,), 0,
                     _toy_text_table().signature())
  if name == 'digits':
    return DataShape('digits', 'digits', (8, 8, 1), 10)
  if name == 'digits_text':
    return DataShape('digits_text', 'digits', (8, 8, 1), 0,
                     load_dataset(data_cfg).caption_signature)
  if name == 'points':
    ds = load_dataset(data_cfg)
    return DataShape(ds.name, ds.kind, ds.example_shape, 0,
                     ds.caption_signature, ds.has_examples)
  if name in images_lib.IMAGE_DATASETS:
    spec = images_lib.IMAGE_DATASETS[name]
    return DataShape(name, 'images', (spec.resolution,) * 2 + (3,),
                     spec.num_classes)
  raise DataError(f'unknown data.name {name!r}; choose one of {DATASETS}')


def load_dataset(data_cfg) -> Dataset:
  name = data_cfg.name
  if name == 'toy2d':
    mix = toy2d.get_mixture(data_cfg.toy_name)
    rng = np.random.default_rng([data_cfg.seed, 1])
    x = mix.sample(rng, int(data_cfg.num_train))
    return Dataset(f'toy2d/{data_cfg.toy_name}', 'points', {'x': x},
                   mixture=mix)
  if name == 'toy2d_text':
    cm = toy2d_text.ring8_captioned()
    x, ids = cm.sample(np.random.default_rng([data_cfg.seed, 1]),
                       int(data_cfg.num_train))
    return Dataset('toy2d_text/ring8', 'points', {'x': x, 'caption_id': ids},
                   mixture=cm.mixture, captions=_toy_text_table(),
                   captioned=cm)
  if name == 'points':
    base = os.path.basename(data_cfg.path)
    if str(data_cfg.path).endswith('.npz'):
      return _conditioned(f'points/{base}', data_cfg.path,
                          tuple(data_cfg.get('example_shape', ())))
    x = points_lib.load_points(data_cfg.path)
    return Dataset(f'points/{base}', 'points', {'x': x})
  if name == 'digits':
    (xtr, ytr), (xte, yte) = digits_lib.load_digits_split()
    return Dataset('digits', 'digits', {'x': xtr, 'label': ytr},
                   {'x': xte, 'label': yte}, num_classes=10)
  if name == 'digits_text':
    return _digits_text()
  if name in images_lib.IMAGE_DATASETS:
    spec = images_lib.IMAGE_DATASETS[name]
    train = images_lib.open_split(spec, spec.train_split,
                                  data_cfg.tfds_data_dir)
    test = images_lib.open_split(spec, spec.eval_split, data_cfg.tfds_data_dir)
    return Dataset(name, 'images', train, test, num_classes=spec.num_classes)
  raise DataError(f'unknown data.name {name!r}; choose one of {DATASETS}')


def _toy_text_table() -> captions_lib.CaptionTable:
  return _table(toy2d_text.table())


def _table(t: dict) -> captions_lib.CaptionTable:
  return captions_lib.CaptionTable(
      t['emb'], t['mask'], None, {'emb': t['null_emb'], 'mask': t['null_mask']},
      tuple(t['captions']))


def _digits_text() -> Dataset:
  (xtr, ytr), (xte, yte) = digits_lib.load_digits_split()
  cd = digits_text.build(xtr)
  split = lambda x, y: {'x': x, 'label': y, 'caption_id': cd.caption_ids(x, y)}
  return Dataset('digits_text', 'digits', split(xtr, ytr), split(xte, yte),
                 captions=_table(digits_text.table(cd)), captioned=cd)


def _conditioned(name: str, path: str, example_shape: tuple = ()) -> Dataset:
  x, ids, table = captions_lib.load_conditioned(path)
  if x is None:
    if not example_shape:
      raise DataError(f'data.path {path!r} holds prompts only (no array '
                      "'x'): give data.example_shape, the shape of one "
                      "example the teacher samples (e.g. '(64, 64, 4)')")
    kind = 'points' if len(example_shape) == 1 else 'arrays'
    return Dataset(name, kind, {'caption_id': ids}, captions=table,
                   prompts_shape=tuple(int(d) for d in example_shape))
  points_lib.check_rows(path, x)
  # Image-shaped examples (images or latents) stay unquantised floats and
  # are scored on their own values (evaluation/references.py).
  kind = 'points' if x.ndim == 2 else 'arrays'
  return Dataset(name, kind, {'x': x, 'caption_id': ids}, captions=table)


__all__ = ['Dataset', 'DataShape', 'DataError', 'data_shape', 'load_dataset',
           'DATASETS']
