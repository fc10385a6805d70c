"""tfds image pipelines under tensorflow_datasets.testing.mock_data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from mmd_jax.data import DataError, batches, images, load_dataset


def _data_cfg(name):
  cfg = default.get_base_config().data
  cfg.name = name
  return cfg


@pytest.mark.parametrize('name,res,classes', [
    ('cifar10', 32, 10), ('imagenet64', 64, 1000), ('imagenet128', 128, 1000)])
def test_image_datasets_load_scaled_and_labelled(name, res, classes):
  with tfds.testing.mock_data(num_examples=12):
    ds = load_dataset(_data_cfg(name))
    assert ds.kind == 'images' and ds.num_classes == classes
    assert ds.example_shape == (res, res, 3) and ds.num_train == 12
    b = ds.train.take(np.array([0, 5, 5]))
  assert b['x'].shape == (3, res, res, 3) and b['x'].dtype == np.float32
  assert b['x'].min() >= -1.0 and b['x'].max() <= 1.0
  assert b['x'].std() > 0.1            # not a constant image
  assert b['label'].dtype == np.int32 and (b['label'] < classes).all()
  np.testing.assert_array_equal(b['x'][1], b['x'][2])


def test_image_stream_deterministic_resumable_flipped_and_per_process():
  with tfds.testing.mock_data(num_examples=40):
    src = load_dataset(_data_cfg('cifar10')).train
    one = batches.BatchStream(src, 8, seed=5, random_flip=True)
    again = batches.BatchStream(src, 8, seed=5, random_flip=True,
                                prefetch=True)
    plain = batches.BatchStream(src, 8, seed=5, random_flip=False)
    procs = [batches.BatchStream(src, 8, seed=5, process_index=i,
                                 process_count=2, random_flip=True)
             for i in range(2)]
    flips = 0
    for step in (3, 0, 4, 5, 11, 4):  # out of order: resuming = any step
      b = one.local_batch_at(step)
      np.testing.assert_array_equal(b['x'], again.local_batch_at(step)['x'])
      halves = [p.local_batch_at(step) for p in procs]
      np.testing.assert_array_equal(
          np.concatenate([h['x'] for h in halves]), b['x'])
      np.testing.assert_array_equal(
          np.concatenate([h['label'] for h in halves]), b['label'])
      # The two processes read different examples.
      assert not set(procs[0].local_indices(step)) & set(
          procs[1].local_indices(step))
      # Each row is the unflipped row or its mirror image.
      p = plain.local_batch_at(step)['x']
      same = np.all(b['x'] == p, axis=(1, 2, 3))
      mirrored = np.all(b['x'] == p[:, :, ::-1], axis=(1, 2, 3))
      assert np.all(same | mirrored)
      flips += int(np.sum(mirrored & ~same))
  assert 8 <= flips <= 40   # about half of 48 rows


def test_center_crop_area_resize_averages_whole_pixels():
  rng = np.random.default_rng(0)
  blocks = rng.integers(0, 256, size=(3, 5, 3)).astype(np.uint8)
  # 2x2 constant blocks, 3 tall and 5 wide; the centre square is columns 1-3.
  img = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)   # (6, 10, 3)
  out = images.center_crop_resize(img, 3)
  np.testing.assert_array_equal(out, blocks[:, 1:4])
  # Area resize of a 4x4 to 2x2 is the mean of each 2x2 block.
  img = rng.integers(0, 200, size=(4, 4, 3)).astype(np.uint8)
  want = img.reshape(2, 2, 2, 2, 3).astype(float).mean(axis=(1, 3))
  # PIL rounds in fixed point: within one grey level.
  np.testing.assert_allclose(images.center_crop_resize(img, 2), want, atol=1.0)


def test_missing_tfds_data_is_one_clear_error(tmp_path):
  cfg = _data_cfg('cifar10')
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(DataError, match='tfds build cifar10'):
    load_dataset(cfg)
