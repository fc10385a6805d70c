import numpy as np
import pytest

from mmd_jax.numerics import diffusion, quadrature
from mmd_jax.science import fake_score_check


@pytest.mark.parametrize('lam', [-2.0, 0.0, 2.0])
def test_quadrature_denoiser_matches_the_linear_gaussian_posterior(lam):
  """g(z) = A z + b: g ~ N(b, C), C = A A^T, so E[g | x_t] =
  b + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha b)."""
  a_mat = np.array([[0.8, 0.3], [-0.2, 0.5]], np.float32)
  b = np.array([0.4, -1.0], np.float32)
  z, logw = quadrature.z_grid(400, extent=6.0)
  a, s = (float(v) for v in diffusion.alpha_sigma(np.float32(lam)))
  x_t = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
  got = quadrature.denoise(z @ a_mat.T + b, logw, x_t,
                           np.full((50,), lam, np.float32))
  c = a_mat @ a_mat.T
  gain = a * c @ np.linalg.inv(a * a * c + s * s * np.eye(2))
  want = b + (x_t - a * b) @ gain.T
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-3)


def test_training_grid_is_close_on_a_curved_generator():
  """The 96^2 training grid against a 400^2 reference, for a nonlinear
  map, at mixed per-row log-SNRs."""
  def g(z):
    return np.stack([np.tanh(2 * z[:, 0]) + 0.3 * z[:, 1],
                     0.5 * z[:, 1] + 0.2 * z[:, 0] ** 2], 1)
  rng = np.random.default_rng(1)
  x_t = rng.normal(size=(64, 2)).astype(np.float32)
  lam = rng.uniform(-3, 3, size=64).astype(np.float32)
  out = []
  for n, ext in ((quadrature.TRAIN_GRID, quadrature.TRAIN_EXTENT), (400, 6.0)):
    z, logw = quadrature.z_grid(n, ext)
    out.append(np.asarray(quadrature.denoise(g(z), logw, x_t, lam)))
  np.testing.assert_allclose(out[0], out[1], atol=0.02)


def test_compare_signal_error_and_cosine():
  x_g = np.zeros((4, 2))
  x_t = np.tile([[1.0, 0.0]], (4, 1))
  exact = fake_score_check.compare(x_t, x_g, x_g)
  assert exact == pytest.approx({'signal': 1.0, 'error': 0.0, 'cos': 1.0})
  # A student as far off as the signal, at right angles to it.
  off = fake_score_check.compare(x_t, np.tile([[0.0, 1.0]], (4, 1)), x_g)
  assert off['error'] == pytest.approx(1.0)
  assert off['cos'] == pytest.approx(np.sqrt(0.5))
