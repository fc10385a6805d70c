import numpy as np
import pytest

from configs import default
from mmd_jax.data import DataError, batches, load_dataset, toy2d
from mmd_jax.data.digits import load_digits_split


def test_toy2d_mixtures_have_their_weights():
  mix = toy2d.get_mixture('asymmetric_mixture')
  np.testing.assert_allclose(mix.weights, [.35, .25, .15, .12, .08, .05])
  x = mix.sample(np.random.default_rng(0), 200_000)
  nearest = np.argmin(np.linalg.norm(x[:, None] - mix.means[None], axis=-1), 1)
  np.testing.assert_allclose(np.bincount(nearest) / len(x), mix.weights,
                             atol=0.005)
  for name in toy2d.TOY2D_NAMES:
    assert toy2d.get_mixture(name).sample(np.random.default_rng(0), 5).shape == (5, 2)
  with pytest.raises(ValueError, match='unknown toy2d'):
    toy2d.get_mixture('nope')


def test_digits_split_is_fixed_and_scaled():
  (xtr, ytr), (xte, yte) = load_digits_split()
  assert xtr.shape == (1437, 8, 8, 1) and xte.shape == (360, 8, 8, 1)
  assert xtr.min() == -1.0 and xtr.max() == 1.0
  assert set(np.unique(ytr)) == set(range(10))
  (xtr2, _), (xte2, _) = load_digits_split()
  np.testing.assert_array_equal(xte, xte2)
  # No image is in both splits.
  tr = {a.tobytes() for a in xtr}
  assert sum(a.tobytes() in tr for a in xte) < 5  # sklearn has a few duplicates


def test_points_loading_and_errors(tmp_path):
  cfg = default.get_base_config().data
  cfg.name = 'points'
  good = tmp_path / 'p.npy'
  np.save(good, np.random.default_rng(0).normal(size=(50, 3)))
  cfg.path = str(good)
  ds = load_dataset(cfg)
  assert ds.example_shape == (3,) and ds.num_train == 50
  for arr, msg in ((np.zeros((4,)), 'rank 2'), (np.zeros((0, 2)), 'empty'),
                   (np.array([['a', 'b']]), 'numeric'),
                   (np.array([[np.nan, 1.0]]), 'NaN')):
    bad = tmp_path / 'bad.npy'
    np.save(bad, arr)
    cfg.path = str(bad)
    with pytest.raises(DataError, match=msg):
      load_dataset(cfg)
  cfg.path = str(tmp_path / 'missing.npy')
  with pytest.raises(DataError, match='does not exist'):
    load_dataset(cfg)


def test_batches_are_deterministic_resumable_and_split_by_process():
  data = {'x': np.arange(100)[:, None].astype(np.float32),
          'label': np.arange(100)}
  one = batches.BatchStream(data, 16, seed=3)
  again = batches.BatchStream(data, 16, seed=3)
  for step in (0, 5, 6, 7, 40):  # 7 straddles an epoch boundary (112 > 100)
    np.testing.assert_array_equal(one.local_indices(step),
                                  again.local_indices(step))
  # Every example appears once per epoch.
  first_epoch = np.concatenate([one.local_indices(s) for s in range(6)])[:96]
  assert len(set(first_epoch)) == 96
  # Two processes read disjoint halves that stitch into the global batch.
  p0 = batches.BatchStream(data, 16, 3, process_index=0, process_count=2)
  p1 = batches.BatchStream(data, 16, 3, process_index=1, process_count=2)
  for step in (0, 9):
    a, b = p0.local_indices(step), p1.local_indices(step)
    assert not set(a) & set(b)
    np.testing.assert_array_equal(np.concatenate([a, b]),
                                  one.local_indices(step))
    np.testing.assert_array_equal(p0.local_batch_at(step)['label'], a)
