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

from mmd_jax.data import digits as digits_lib
from mmd_jax.data import images as images_lib
from mmd_jax.data import points as points_lib
from mmd_jax.data import toy2d
from mmd_jax.data.points import DataError

DATASETS = ('toy2d', 'points', 'digits') + tuple(images_lib.IMAGE_DATASETS)


@dataclasses.dataclass
class Dataset:
  name: str                      # e.g. 'toy2d/asymmetric_mixture'
  kind: str                      # 'points' (low-dim), 'digits' or 'images'
  train: object                  # {'x': (N, ...), 'label': (N,)?} or an
  test: Optional[object] = None  # images.ImageSource
  num_classes: int = 0
  mixture: Optional[toy2d.Mixture] = None

  @property
  def example_shape(self):
    if isinstance(self.train, images_lib.ImageSource):
      return self.train.example_shape
    return tuple(self.train['x'].shape[1:])

  @property
  def num_train(self):
    return len(self.train) if isinstance(
        self.train, images_lib.ImageSource) else int(self.train['x'].shape[0])

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


def data_shape(data_cfg) -> DataShape:
  """The shape of what `load_dataset(data_cfg)` would load, reading
  nothing but a points file's header."""
  name = data_cfg.name
  if name == 'toy2d':
    return DataShape(f'toy2d/{data_cfg.toy_name}', 'points', (2,), 0)
  if name == 'digits':
    return DataShape('digits', 'digits', (8, 8, 1), 10)
  if name == 'points':
    arr = points_lib.load_points(data_cfg.path)
    return DataShape(f'points/{os.path.basename(data_cfg.path)}', 'points',
                     tuple(arr.shape[1:]), 0)
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
  if name == 'points':
    x = points_lib.load_points(data_cfg.path)
    base = os.path.basename(data_cfg.path)
    return Dataset(f'points/{base}', 'points', {'x': x})
  if name == 'digits':
    (xtr, ytr), (xte, yte) = digits_lib.load_digits_split()
    return Dataset('digits', 'digits', {'x': xtr, 'label': ytr},
                   {'x': xte, 'label': yte}, num_classes=10)
  if name in images_lib.IMAGE_DATASETS:
    spec = images_lib.IMAGE_DATASETS[name]
    train = images_lib.open_split(spec, spec.train_split,
                                  data_cfg.tfds_data_dir)
    test = images_lib.open_split(spec, spec.eval_split, data_cfg.tfds_data_dir)
    return Dataset(name, 'images', train, test, num_classes=spec.num_classes)
  raise DataError(f'unknown data.name {name!r}; choose one of {DATASETS}')


__all__ = ['Dataset', 'DataShape', 'DataError', 'data_shape', 'load_dataset',
           'DATASETS']
