"""FID machinery: closed forms, device-count independence, Inception Score,
and the Inception port against its PyTorch source (where torch exists)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mmd_jax.evaluation import fid, precision_recall

import tiny


def _rot(theta):
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[c, -s], [s, c]])


def test_frechet_distance_is_w2_for_commuting_full_covariances():
  """S1 = R D1 R^T, S2 = R D2 R^T: W2^2 = |dmu|^2 + sum (sqrt d1 - sqrt d2)^2."""
  r = _rot(0.7)
  d1, d2 = np.array([2.0, 0.3]), np.array([0.5, 1.7])
  mu1, mu2 = np.array([0.3, -1.0]), np.array([1.1, 0.4])
  want = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(d1) - np.sqrt(d2))**2)
  got = fid.frechet_distance(mu1, r @ np.diag(d1) @ r.T, mu2,
                             r @ np.diag(d2) @ r.T)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_frechet_distance_is_w2_for_non_commuting_covariances():
  """For 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), so
  tr (S1^1/2 S2 S1^1/2)^1/2 = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))."""
  s1 = _rot(0.3) @ np.diag([3.0, 0.2]) @ _rot(0.3).T
  s2 = _rot(1.2) @ np.diag([0.4, 2.5]) @ _rot(1.2).T
  mu1, mu2 = np.array([1.0, 2.0]), np.array([-0.5, 0.25])
  cross = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) *
                                                  np.linalg.det(s2)))
  want = np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2 * cross
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want,
                             rtol=1e-6)


def test_feature_stats_match_numpy_and_mask_padding():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(1000, 7)) * 3 + 1
  st = fid.FeatureStats(7)
  for i in range(0, 1000, 300):  # the last batch is padded to 300 rows
    chunk = f[i:i + 300]
    padded = np.concatenate([chunk, np.full((300 - len(chunk), 7), 1e6)])
    st.update(padded.astype(np.float32), valid=len(chunk))
  mu, cov = st.mean_cov()
  f32 = f.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(cov, np.cov(f32, rowvar=False), rtol=1e-10,
                             atol=1e-10)


_DEVICES_SCRIPT = r'''
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from mmd_jax.device import parallel
from mmd_jax.evaluation import fid
assert jax.device_count() == 8
rng = np.random.default_rng(1)
batches = [rng.normal(size=(64, 16)).astype(np.float32) * 5 + 2 for _ in range(5)]
out = {}
for name, devs in (('one', jax.devices()[:1]), ('eight', None)):
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 1}, devs)
  st = fid.FeatureStats(16)
  for i, b in enumerate(batches):
    x = jax.device_put(b, parallel.batch_sharding(mesh))
    assert len(x.sharding.device_set) == (1 if name == 'one' else 8)
    st.update(x, valid=64 if i < 4 else 40)
  out[name] = st.mean_cov()
for a, b in zip(out['one'], out['eight']):
  np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-12)
print('STATS_OK')
'''


def test_float64_stats_on_8_devices_equal_one_device(repo_root):
  env = dict(os.environ, XLA_FLAGS=tiny.xla_flags(8),
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT], cwd=repo_root,
                     env=env, capture_output=True, text=True, timeout=300)
  assert 'STATS_OK' in r.stdout, r.stderr[-3000:]


def test_inception_score_on_hand_made_logits():
  # Confident and uniform over C classes: IS = C. Always the same class: 1.
  c = 10
  confident = np.full((200, c), -1e4)
  confident[np.arange(200), np.arange(200) % c] = 0.0
  np.testing.assert_allclose(fid.inception_score(confident, splits=4)[0], c,
                             rtol=1e-9)
  same = np.zeros((100, c))
  same[:, 3] = 50.0
  np.testing.assert_allclose(fid.inception_score(same, splits=2)[0], 1.0,
                             atol=1e-9)
  # A hand-computed case: two samples, p1 = (.8, .2), p2 = (.2, .8).
  lg = np.log(np.array([[0.8, 0.2], [0.2, 0.8]]))
  kl = 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5)
  np.testing.assert_allclose(fid.inception_score(lg, splits=1)[0],
                             np.exp(kl), rtol=1e-12)


def test_precision_recall_identical_and_disjoint():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 8))
  assert precision_recall.precision_recall(x, x.copy(), 3) == {
      'precision': 1.0, 'recall': 1.0}
  far = precision_recall.precision_recall(x, x + 50.0, 3)
  assert far['precision'] == 0.0 and far['recall'] == 0.0


def test_reference_stats_round_trip(tmp_path):
  mu, sigma = np.arange(3.0), np.eye(3) * 2
  fid.save_stats(str(tmp_path / 'ref.npz'), mu, sigma)
  m2, s2 = fid.load_stats(str(tmp_path / 'ref.npz'))
  np.testing.assert_array_equal(m2, mu)
  np.testing.assert_array_equal(s2, sigma)
  np.savez(tmp_path / 'bad.npz', mean=mu)
  with pytest.raises(ValueError, match='mu and sigma'):
    fid.load_stats(str(tmp_path / 'bad.npz'))


_TORCH_SCRIPT = r'''
import pathlib, sys, tempfile
import numpy as np
import pytest


class _Patch:
  def setattr(self, obj, name, value):
    setattr(obj, name, value)


def _random_fid_inception(torch):
  """pytorch-fid's fid_inception_v3 network with random weights (and random
  batch-norm statistics, so that they matter), built without its download."""
  pfi = pytest.importorskip('pytorch_fid.inception')
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) *
                       (2.0 / fan_in) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
        m.bias.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(0.02 * torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(0.01 * torch.randn(m.bias.shape, generator=gen))
  return pfi, net.eval()


def _check(tmp_path, monkeypatch):
  """.pth -> .npz (the converter CLI's code) -> Flax gives the features of
  pytorch-fid's own InceptionV3 (pool3) and the same fc logits."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  import jax.numpy as jnp

  from mmd_jax.evaluation import convert_inception, inception
  pfi, net = _random_fid_inception(torch)
  state = net.state_dict()
  pth, npz = tmp_path / 'pt.pth', tmp_path / 'inception.npz'
  torch.save(state, pth)
  assert convert_inception.main(['convert', str(pth), str(npz)]) == 0

  # The source network: pytorch-fid's InceptionV3 wrapper, fed our weights
  # through its own loading path instead of the download.
  monkeypatch.setattr(pfi, 'load_state_dict_from_url',
                      lambda *a, **k: state)
  src = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 37, 41, 3)).astype(np.float32)  # in [0, 1]
  with torch.no_grad():
    t_pool = src(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0]
    t_pool = t_pool.reshape(3, -1)
    t_logits = net.fc(t_pool).numpy()
  t_pool = t_pool.numpy()

  params = inception.load_params(str(npz))
  pool, logits = inception.InceptionV3().apply(params, jnp.asarray(images))
  scale = np.abs(t_pool).max()
  assert scale > 1e-3
  np.testing.assert_allclose(np.asarray(pool), t_pool, rtol=1e-4,
                             atol=1e-4 * scale)
  np.testing.assert_allclose(np.asarray(logits), t_logits, rtol=1e-4,
                             atol=1e-4 * np.abs(t_logits).max())


_check(pathlib.Path(tempfile.mkdtemp()), _Patch())
print('INCEPTION_OK')
'''


def test_inception_port_matches_pytorch_fid(repo_root):
  """.pth -> .npz (the converter's code) -> Flax gives the pool features of
  pytorch-fid's own InceptionV3 and the same fc logits. In a subprocess:
  torch and TensorFlow (imported by clu) in one process can abort."""
  import importlib.util
  for mod in ('torch', 'torchvision', 'pytorch_fid'):
    if importlib.util.find_spec(mod) is None:
      pytest.skip(f'{mod} is not installed')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', _TORCH_SCRIPT], cwd=repo_root,
                     env=env, capture_output=True, text=True, timeout=600)
  assert 'INCEPTION_OK' in r.stdout, (r.stdout + r.stderr)[-3000:]
