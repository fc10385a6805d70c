import numpy as np
import scipy.linalg

from mmd_jax.data import toy2d
from mmd_jax.evaluation import fid, precision_recall, toy_metrics


def test_energy_distance_and_mmd():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1500, 2))
  y = rng.normal(size=(1500, 2))
  assert abs(toy_metrics.energy_distance(x, x)) < 1e-5
  same = toy_metrics.energy_distance(x, y)
  shifted = toy_metrics.energy_distance(x, y + np.array([1.0, 0.0]))
  assert 0 <= same < 0.01 < shifted
  # Closed form for two unit-variance 1-D... here: a shift of 1 in 2-D gives
  # 2E|X-Y| - E|X-X'| - E|Y-Y'| ~ 0.4 (checked against scipy below).
  from scipy.spatial.distance import cdist
  want = 2 * cdist(x, y + [1, 0]).mean() - cdist(x, x).mean() - cdist(
      y + [1, 0], y + [1, 0]).mean()
  np.testing.assert_allclose(shifted, want, rtol=1e-3)
  assert toy_metrics.mmd_rbf(x, y) < toy_metrics.mmd_rbf(x, y + 1.0)
  assert abs(toy_metrics.mmd_rbf(x, x)) < 1e-5


def test_mode_stats():
  mix = toy2d.get_mixture('asymmetric_mixture')
  rng = np.random.default_rng(0)
  real = mix.sample(rng, 20_000)
  s = toy_metrics.mode_stats(real, mix)
  assert s['mode_coverage'] == 1.0 and s['mode_weight_error'] < 0.01
  assert s['near_mode_fraction'] > 0.99
  # Samples from only the two heaviest modes.
  collapsed = real[np.argmin(np.linalg.norm(
      real[:, None] - mix.means[None], axis=-1), 1) < 2]
  s = toy_metrics.mode_stats(collapsed, mix)
  np.testing.assert_allclose(s['mode_coverage'], 2 / 6)
  assert s['mode_weight_error'] > 0.2
  s = toy_metrics.mode_stats(np.zeros((100, 2)), mix)  # all at the centre
  assert s['near_mode_fraction'] == 0.0 and s['mode_coverage'] == 0.0


def test_mode_ratios_on_the_imbalanced_toy():
  mix = toy2d.get_mixture('imbalanced8')
  np.testing.assert_allclose(mix.weights.max() / mix.weights.min(), 80.0)
  means = mix.means
  gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert gaps[~np.eye(8, dtype=bool)].min() > 15 * mix.stds.max()
  rng = np.random.default_rng(1)
  real = mix.sample(rng, 100_000)
  s = toy_metrics.mode_stats(real, mix)
  assert 0.85 < s['mode_ratio_min'] <= 1.0
  assert abs(np.log(s['worst_mode_ratio'])) < 0.2
  # Half of the rarest mode's samples dropped: its ratio is ~0.5.
  rare = np.argmin(np.linalg.norm(real[:, None] - means[None], axis=-1), 1)
  keep = (rare != 7) | (np.arange(len(real)) % 2 == 0)
  s = toy_metrics.mode_stats(real[keep], mix)
  np.testing.assert_allclose(s['mode_ratio_min'], 0.5, rtol=0.2)
  assert s['worst_mode_ratio'] == s['mode_ratio_min']


def test_frechet_distance_closed_form():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 5))
  b = rng.normal(size=(5, 5))
  s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  r1 = scipy.linalg.sqrtm(s1).real
  want = np.sum((mu1 - mu2)**2) + np.trace(
      s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want,
                             rtol=1e-6)
  # Diagonal case: sum (mu diff)^2 + sum (sqrt(s1) - sqrt(s2))^2.
  d1, d2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
  np.testing.assert_allclose(
      fid.frechet_distance([0, 0], np.diag(d1), [1, 2], np.diag(d2)),
      5 + np.sum((np.sqrt(d1) - np.sqrt(d2))**2), rtol=1e-9)
  # Singular covariances stay finite and >= 0.
  sing = np.outer([1, 2, 3.0], [1, 2, 3.0])
  v = fid.frechet_distance(np.zeros(3), sing, np.zeros(3), sing)
  assert abs(v) < 1e-6


def test_precision_recall():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 4))
  pr = precision_recall.precision_recall(x, x.copy(), k=3)
  assert pr == {'precision': 1.0, 'recall': 1.0}
  far = precision_recall.precision_recall(x, x + 100.0, k=3)
  assert far['precision'] < 0.01 and far['recall'] < 0.01
  # A collapsed generator: high precision, low recall.
  coll = precision_recall.precision_recall(x, x[:10].repeat(30, 0) + 1e-3, k=3)
  assert coll['precision'] > 0.9 and coll['recall'] < 0.3
