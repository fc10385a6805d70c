"""tfds image datasets, read by random access (`tfds.data_source`).

Random access is what makes the pipeline simple and exact: step i's global
batch is positions i*B ... i*B+B-1 of per-epoch permutations (batches.py),
so the order is a pure function of the seed, the position resumes from the
step number alone, and each process decodes only its own slice.

Prepare the data once per machine (array_record is the format tfds reads by
random access):

    tfds build cifar10 --file_format=array_record
    tfds build imagenet_resized/64x64 --file_format=array_record
    tfds build imagenet2012 --file_format=array_record   # manual download

and point `data.tfds_data_dir` at the directory (default: tfds's own,
~/tensorflow_datasets or $TFDS_DATA_DIR).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
from PIL import Image

from mmd_jax.data.points import DataError


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  tfds_name: str
  resolution: int
  num_classes: int
  train_split: str
  eval_split: str
  center_crop: bool   # variable-size sources: centre crop, area resize


IMAGE_DATASETS = {
    'cifar10': ImageSpec('cifar10', 32, 10, 'train', 'test', False),
    'imagenet64': ImageSpec('imagenet_resized/64x64', 64, 1000, 'train',
                            'validation', False),
    'imagenet128': ImageSpec('imagenet2012', 128, 1000, 'train',
                             'validation', True),
}


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop, then area (box-filter) resize, as in ADM's
  ImageNet preprocessing: box filtering averages whole source pixels, so
  downsampling does not alias."""
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  crop = image[top:top + s, left:left + s]
  if s == size:
    return crop
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BOX))


class ImageSource:
  """A tfds split as a random-access source: `take(idx)` returns
  {'x': float32 (n, R, R, 3) in [-1, 1], 'label': int32 (n,)}."""

  def __init__(self, records, spec: ImageSpec, name: str, split: str,
               num_threads: int = 16):
    self.records = records
    self.spec = spec
    self.name = name
    self.split = split
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)

  def __len__(self):
    return len(self.records)

  @property
  def example_shape(self):
    return (self.spec.resolution, self.spec.resolution, 3)

  def _one(self, i: int):
    ex = self.records[int(i)]
    img = np.asarray(ex['image'])
    if img.ndim == 2 or img.shape[-1] == 1:
      img = np.broadcast_to(img.reshape(img.shape[:2] + (1,)),
                            img.shape[:2] + (3,))
    if self.spec.center_crop:
      img = center_crop_resize(np.ascontiguousarray(img), self.spec.resolution)
    elif img.shape[:2] != (self.spec.resolution,) * 2:
      raise DataError(f'{self.name}: example {i} has shape {img.shape}, '
                      f'expected {self.example_shape}')
    return img, int(ex['label'])

  def take_uint8(self, idx) -> tuple[np.ndarray, np.ndarray]:
    # Decoding runs in threads: array_record reads and PNG/JPEG decoding
    # release the GIL.
    out = list(self._pool.map(self._one, np.asarray(idx).tolist()))
    if not out:
      return (np.zeros((0,) + self.example_shape, np.uint8),
              np.zeros((0,), np.int32))
    return (np.stack([o[0] for o in out]),
            np.asarray([o[1] for o in out], np.int32))

  def take(self, idx) -> dict:
    img, label = self.take_uint8(idx)
    return {'x': img.astype(np.float32) / 127.5 - 1.0, 'label': label}


class LazyImages:
  """The first n images of a source as uint8, sliced on demand: what
  Inception reads without holding 50k decoded images in memory."""

  def __init__(self, source: ImageSource, n: int):
    self.source = source
    self.n = min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, sl: slice) -> np.ndarray:
    start, stop, _ = sl.indices(self.n)
    return self.source.take_uint8(np.arange(start, stop))[0]


def open_split(spec: ImageSpec, split: str, data_dir: str = '') -> ImageSource:
  import tensorflow_datasets as tfds  # only data/ imports tfds
  try:
    records = tfds.data_source(spec.tfds_name, split=split,
                               data_dir=data_dir or None, download=False)
  except Exception as e:  # tfds raises several types for missing data.
    where = data_dir or 'the default tfds data_dir'
    raise DataError(
        f'tfds dataset {spec.tfds_name!r} split {split!r} is not prepared in '
        f'{where} ({type(e).__name__}); run `tfds build {spec.tfds_name} '
        '--file_format=array_record` (see README, "Image data") or set '
        'data.tfds_data_dir') from None
  if len(records) == 0:
    raise DataError(f'tfds dataset {spec.tfds_name!r} split {split!r} is empty')
  return ImageSource(records, spec, spec.tfds_name, split)
