"""scikit-learn's bundled 8x8 digits: NHWC in [-1, 1], fixed train/test split."""
from __future__ import annotations

import numpy as np

NUM_TEST = 360  # about 20% of the 1797 images, fixed forever.
SPLIT_SEED = 0


def load_digits_split():
  """Returns ((x_train, y_train), (x_test, y_test)); x is (N, 8, 8, 1)."""
  from sklearn import datasets  # imported lazily: only digits needs it.
  d = datasets.load_digits()
  x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]  # [0,16] -> [-1,1]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
  test, train = perm[:NUM_TEST], perm[NUM_TEST:]
  return (x[train], y[train]), (x[test], y[test])
