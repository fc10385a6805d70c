"""AEVB against closed forms on a linear-Gaussian model, and the vae stage."""
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmd_jax.methods import vae


class LinearGaussianVAE(nn.Module):
  """q(z|x) = N(a x + c, exp(lv)), p(z) = N(0, 1), p(x|z) = N(w z + b,
  exp(ls)^2): every expectation of the ELBO is in closed form."""
  latent_dim: int = 1

  def setup(self):
    self.enc = nn.Dense(1, kernel_init=nn.initializers.constant(0.3),
                        bias_init=nn.initializers.constant(0.2))
    self.lv = self.param('lv', nn.initializers.constant(-0.7), (1,))
    self.dec = nn.Dense(1, kernel_init=nn.initializers.constant(1.5),
                        bias_init=nn.initializers.constant(-0.4))
    self.log_scale = self.param('log_scale', nn.initializers.constant(-0.2),
                                (1,))

  def encode(self, x):
    m = self.enc(x)
    return m, jnp.broadcast_to(self.lv, m.shape)

  def decode(self, z):
    return self.dec(z), self.log_scale

  def __call__(self, x, z):
    return self.encode(x), self.decode(z)


MODEL = LinearGaussianVAE()
X = jnp.array([[-1.0], [0.3], [1.7]])


def _params():
  return MODEL.init(jax.random.PRNGKey(0), X, jnp.zeros((3, 1)))


def analytic_elbo(params, x):
  p = params['params']
  a, c = p['enc']['kernel'][0, 0], p['enc']['bias'][0]
  w, b = p['dec']['kernel'][0, 0], p['dec']['bias'][0]
  lv, ls = p['lv'][0], p['log_scale'][0]
  m, s2, v = a * x[:, 0] + c, jnp.exp(lv), jnp.exp(2 * ls)
  rec = (-0.5 * math.log(2 * math.pi) - ls
         - ((x[:, 0] - w * m - b) ** 2 + w * w * s2) / (2 * v))
  kl = -0.5 * (1 + lv - m * m - s2)
  return rec - kl


def log_marginal(params, x):
  p = params['params']
  w, b = p['dec']['kernel'][0, 0], p['dec']['bias'][0]
  var = w * w + jnp.exp(2 * p['log_scale'][0])
  return -0.5 * (jnp.log(2 * math.pi * var) + (x[:, 0] - b) ** 2 / var)


def test_estimator_b_is_unbiased_for_the_analytic_elbo():
  params = _params()
  est = vae.elbo(MODEL, params, X, jax.random.PRNGKey(1), 200_000, 'gaussian')
  np.testing.assert_allclose(est, analytic_elbo(params, X), atol=0.01)


def test_sgvb_gradient_matches_score_function_and_closed_form():
  params = _params()
  n = 400_000
  key = jax.random.PRNGKey(2)
  # SGVB: the gradient of the reparameterised estimate, averaged over n
  # draws (the gradient is linear, so this is the per-sample mean).
  sgvb = jax.grad(lambda p: jnp.sum(vae.elbo(MODEL, p, X, key, n,
                                             'gaussian')))(params)
  exact = jax.grad(lambda p: jnp.sum(analytic_elbo(p, X)))(params)

  # Score function (REINFORCE): z is a constant; q's parameters enter only
  # through log q(z|x). The KL is analytic in both estimators.
  mean, log_var = MODEL.apply(params, X, method='encode')
  z = jax.lax.stop_gradient(
      mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, (n,) + mean.shape))

  def per_sample(p, z):
    m, lv = MODEL.apply(p, X, method='encode')
    log_q = jnp.sum(-0.5 * ((z - m) ** 2 / jnp.exp(lv) + lv), -1)
    loc, ls = MODEL.apply(p, z, method='decode')
    log_lik = vae.log_likelihood('gaussian', X, loc, ls)
    f = jax.lax.stop_gradient(log_lik)
    # Baseline: the exact E_q log p(x|z) per row (any z-free constant keeps
    # the estimator unbiased; this one cuts its variance).
    base = jax.lax.stop_gradient(
        analytic_elbo(p, X) - 0.5 * (1 + lv[:, 0] - m[:, 0] ** 2
                                     - jnp.exp(lv[:, 0])))
    return jnp.sum((f - base) * log_q + log_lik)

  grads = jax.vmap(jax.grad(per_sample), in_axes=(None, 0))(params, z)
  kl_grad = jax.grad(lambda p: -jnp.sum(vae.gaussian_kl(
      *MODEL.apply(p, X, method='encode'))))(params)
  sf = jax.tree.map(lambda g, k: jnp.mean(g, 0) + k, grads, kl_grad)
  se = jax.tree.map(lambda g: jnp.std(g, 0) / math.sqrt(n), grads)
  for path, g_sf in jax.tree_util.tree_leaves_with_path(sf):
    g_rp = _get(sgvb, path)
    g_ex = _get(exact, path)
    s = _get(se, path)
    np.testing.assert_allclose(g_rp, g_ex, atol=0.01, rtol=0.01,
                               err_msg=str(path))
    assert np.all(np.abs(g_sf - g_rp) <= 5 * s + 1e-3), (path, g_sf, g_rp, s)
  # The comparison has teeth: the encoder's gradient is far from zero.
  assert abs(float(exact['params']['lv'][0])) > 0.1


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_iwae_tightens_to_the_exact_log_likelihood():
  params = _params()
  key = jax.random.PRNGKey(3)
  exact = log_marginal(params, X)
  elbo = analytic_elbo(params, X)
  iw = vae.iwae(MODEL, params, X, key, 5000, 'gaussian')
  iw1 = vae.iwae(MODEL, params, X, key, 1, 'gaussian', chunk=1)
  assert np.all(np.asarray(exact - elbo) > 0.05)   # q is not the posterior
  np.testing.assert_allclose(iw, exact, atol=0.01)
  assert np.all(np.asarray(iw) >= np.asarray(elbo))
  # K = 1 is a single-sample, KL-by-Monte-Carlo ELBO: unbiased, but noisy.
  many = jnp.mean(jax.vmap(lambda k: vae.iwae(MODEL, params, X, k, 1,
                                              'gaussian', chunk=1))(
      jax.random.split(key, 20_000)), 0)
  np.testing.assert_allclose(many, elbo, atol=0.02)
  assert iw1.shape == (3,)


@pytest.mark.parametrize('arch', ['mlp', 'conv'])
@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian'])
def test_vae_networks_shapes(arch, likelihood):
  from mmd_jax.models.vae import VAE
  m = VAE(example_shape=(8, 8, 1), latent_dim=3, arch=arch, hidden=8,
          likelihood=likelihood)
  x = jnp.zeros((5, 8, 8, 1))
  p = m.init(jax.random.PRNGKey(0), x, jnp.zeros((5, 3)))
  mean, log_var = m.apply(p, x, method='encode')
  assert mean.shape == log_var.shape == (5, 3)
  loc, ls = m.apply(p, jnp.zeros((5, 3)), method='decode')
  assert loc.shape == (5, 8, 8, 1)
  assert (ls is None) == (likelihood == 'bernoulli')
  e = vae.elbo(m, p, x, jax.random.PRNGKey(1), 2, likelihood)
  assert e.shape == (5,) and np.all(np.isfinite(e))


def test_vae_stage_end_to_end(tmp_path):
  import tiny
  w = str(tmp_path / 'w')
  tiny.run('digits', 'tiny_vae', w)
  rep = json.load(open(os.path.join(w, 'report.json')))
  rows = [x for x in rep['rows'] if x['model'] == 'vae']
  assert len(rows) == 1 and len(rep['rows']) == 1
  m = rows[0]['metrics']
  assert np.isfinite(m['elbo']) and np.isfinite(m['log_likelihood'])
  assert m['log_likelihood'] >= m['elbo']
  assert rows[0]['setting']['split'] == 'test'
  assert rows[0]['setting']['num_examples'] == 360
  md = open(os.path.join(w, 'report.md')).read()
  assert '## Settings: vae' in md and '| model | latent_dim | arch |' in md
  for f in ('vae_manifold.png', 'samples_vae.png', 'vae/samples.png',
            'vae/manifold.png', 'report.md'):
    assert os.path.exists(os.path.join(w, f)), f
  steps = [json.loads(l)['step'] for l in open(os.path.join(w, 'vae',
                                                            'metrics.jsonl'))]
  assert steps[-1] == 20


def test_latent_pipeline_end_to_end(tmp_path):
  """vae -> teacher -> mm_alternating -> emd -> evaluate in the VAE's
  latent space: the diffusion stages train on (N, latent_dim) points and
  everything scored or sampled comes back decoded, in data space. Another
  run then diffuses in that VAE's space by naming it."""
  import tiny
  from mmd_jax import sample
  from mmd_jax.run.checks import ConfigError
  w = str(tmp_path / 'w')
  tiny.run('digits_latent', 'tiny', w)
  meta = json.load(open(os.path.join(w, 'teacher', 'stage.json')))
  assert meta['example_shape'] == [4]
  rep = json.load(open(os.path.join(w, 'report.json')))
  models = [x['model'] for x in rep['rows']]
  assert models[0] == 'vae' and 'teacher' in models
  assert 'mm_alternating' in models and 'emd' in models
  for row in rep['rows'][1:]:
    assert set(row['metrics']) >= {'fd', 'class_accuracy'}
    assert all(np.isfinite(v) for v in row['metrics'].values())
  s, _, _ = sample.draw(os.path.join(w, 'mm_alternating_k2'), None, 7)
  assert s.shape == (7, 8, 8, 1)           # decoded, not (7, 4) latents
  assert s.min() >= -1.0 and s.max() <= 1.0
  assert os.path.exists(os.path.join(w, 'teacher', 'samples.png'))

  # A second run imports the trained VAE and reads the first run's teacher
  # in its space.
  w2 = str(tmp_path / 'w2')
  vae_dir = os.path.join(w, 'vae')
  tiny.run('digits_latent', 'tiny', w2, {
      'stages': ('mm_alternating', 'evaluate'),
      'latent.vae_checkpoint': vae_dir,
      'teacher.checkpoint': os.path.join(w, 'teacher')})
  rows = json.load(open(os.path.join(w2, 'report.json')))['rows']
  assert [r['model'] for r in rows][:2] == ['vae', 'teacher']
  assert rows[0]['metrics'] == rep['rows'][0]['metrics']
  assert not os.path.exists(os.path.join(w2, 'vae'))
  # A VAE trained with another setting is refused in one line.
  with pytest.raises(ConfigError, match='latent_dim'):
    tiny.run('digits_latent', 'tiny', str(tmp_path / 'w3'), {
        'stages': ('teacher',), 'latent.vae_checkpoint': vae_dir,
        'vae.latent_dim': 3})


@pytest.mark.parametrize('key,value,needle', [
    ('vae.arch', 'dense', 'config.vae.arch: unknown'),
    ('vae.likelihood', 'poisson', 'config.vae.likelihood: unknown'),
    ('vae.latent_dim', 0, 'config.vae.latent_dim: must be an integer >= 1'),
    ('vae.iwae_samples', 150, 'config.vae.iwae_samples: must be below 100'),
    ('latent.vae_checkpoint', '/nonexistent/vae',
     'config.latent.vae_checkpoint: '),
])
def test_vae_config_errors_name_the_key(key, value, needle):
  from configs import digits_latent
  from mmd_jax.run import config_check
  c = digits_latent.get_config()
  section, name = key.split('.')
  with c.unlocked():
    c[section][name] = value
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(c)
  assert str(e.value).startswith(needle), str(e.value)


def test_a_latent_space_caches_its_encoding_keyed_by_the_data(tmp_path):
  """Encoded once per dataset: the same data read back from the cache (not
  re-encoded), other data encoded afresh, never served a stale file."""
  from mmd_jax.data import Dataset
  from mmd_jax.numerics.space import LatentSpace
  calls = []

  def encoder(params, x):
    calls.append(len(x))
    return x[:, ::2, ::2, :] * params

  space = LatentSpace('half', 16, encoder, None, jnp.float32(2.0), 0.5,
                      latent_shape=(4, 4, 1), cache_dir=str(tmp_path))
  x = np.random.default_rng(0).uniform(-1, 1, (10, 8, 8, 1)).astype(
      np.float32)
  data = Dataset('d', 'digits', {'x': x, 'label': np.arange(10)})
  a = space.encode_dataset(data)
  assert a.kind == 'arrays' and a.train['x'].shape == (10, 4, 4, 1)
  np.testing.assert_allclose(a.train['x'], x[:, ::2, ::2] * 2.0 * 0.5)
  np.testing.assert_array_equal(a.train['label'], np.arange(10))
  assert calls == [10] and len(os.listdir(tmp_path)) == 1
  b = space.encode_dataset(data)
  assert calls == [10]   # read back
  np.testing.assert_array_equal(b.train['x'], a.train['x'])
  x2 = x.copy()
  x2[3, 0, 0, 0] += 0.25   # one value changed: encoded afresh
  c = space.encode_dataset(Dataset('d', 'digits', {'x': x2}))
  assert calls == [10, 10] and len(os.listdir(tmp_path)) == 2
  assert c.train['x'][3, 0, 0, 0] == pytest.approx(x2[3, 0, 0, 0])
