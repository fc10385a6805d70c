"""The `vae` stage: AEVB training (methods/vae.py) and its report rows.

W/vae holds the checkpoints; evaluation scores the held-out split with the
ELBO (estimator B, L = 1, averaged over `iwae_samples` draws, so it is the
bound itself up to Monte Carlo error) and the IWAE log-likelihood with K =
vae.iwae_samples, both in nats per datapoint, and draws the decoded latent
manifold when the latent is 2-D.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mmd_jax import train
from mmd_jax.evaluation import plots
from mmd_jax.methods import vae
from mmd_jax.models.vae import VAE


def module_for(config, dataset) -> VAE:
  v = config.vae
  return VAE(example_shape=tuple(dataset.example_shape),
             latent_dim=v.latent_dim, arch=v.arch, hidden=v.hidden,
             likelihood=v.likelihood)


def hparams(config) -> vae.VAEHParams:
  return vae.VAEHParams(num_samples=config.vae.num_samples,
                        likelihood=config.vae.likelihood)


def optimizer(config):
  v = config.vae
  if v.optimizer == 'adagrad':
    return optax.adagrad(v.learning_rate)
  return optax.adam(v.learning_rate)


def setting(config) -> dict:
  v = config.vae
  return {'latent_dim': v.latent_dim, 'arch': v.arch, 'hidden': v.hidden,
          'likelihood': v.likelihood}


def vae_stage(config, workdir: str, dataset,
              stage_dir: str | None = None) -> train.Stage:
  module, hp, tx = module_for(config, dataset), hparams(config), optimizer(
      config)

  def init(key, batch, frozen):
    del frozen
    return vae.init(key, module, hp, tx, batch)

  def preview(state, path):
    save_samples_and_manifold(config, dataset, state.params, path)

  meta = {'method': 'vae', 'k': None, 'dataset': dataset.name,
          'example_shape': list(dataset.example_shape),
          'setting': setting(config)}
  return train.Stage(name='vae',
                     stage_dir=stage_dir or os.path.join(workdir, 'vae'),
                     num_steps=config.vae.num_train_steps, init=init,
                     step=vae.step, rng=lambda s: s.rng, meta=meta,
                     preview=preview)


def load_vae(config, workdir, dataset, mesh, step=None, stage_dir=None):
  from mmd_jax import stages
  stage = vae_stage(config, workdir, dataset, stage_dir)
  stream = stages.stream_for(config, dataset, config.vae.batch_size, 3)
  return train.restore_latest(stage, stream, mesh,
                              stages.stage_key(config, 'vae'), step)


def decode(config, module, params, z):
  return vae.decode_mean(module, params, z, config.vae.likelihood)


def _prior_samples(config, module, params, n: int, seed: int):
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, module.latent_dim))
  return np.asarray(jax.jit(lambda p, z: decode(config, module, p, z))(
      params, z))


def manifold(config, module, params, n: int = 20):
  """Decoder means on an n x n grid of Gaussian quantiles of a 2-D latent
  (Kingma & Welling's figure 4)."""
  from scipy.stats import norm
  q = norm.ppf(np.linspace(0.05, 0.95, n))
  zz = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2).astype(np.float32)
  return np.asarray(decode(config, module, params, jnp.asarray(zz)))


def save_samples_and_manifold(config, dataset, params, path):
  module = module_for(config, dataset)
  x = _prior_samples(config, module, params, 100, config.eval.seed)
  plots.save_samples(x, path, f'VAE samples (latent {module.latent_dim})')
  if module.latent_dim == 2 and x.ndim == 4:
    save_manifold(config, module, params,
                  os.path.join(os.path.dirname(path), 'manifold.png'))


def save_manifold(config, module, params, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  grid = plots.image_grid(manifold(config, module, params), ncol=20)
  fig, ax = plt.subplots(figsize=(6, 6))
  ax.imshow(grid, cmap='gray', vmin=0, vmax=1)
  ax.axis('off')
  ax.set_title('VAE: decoded 2-D latent manifold', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def held_out(dataset, limit: int = 10_000):
  """(x, split name): the test split where there is one."""
  test = dataset.test
  if isinstance(test, dict):
    return np.asarray(test['x'][:limit]), 'test'
  if test is not None and hasattr(test, 'take'):
    return np.asarray(test.take(np.arange(min(limit, len(test))))['x']), 'test'
  return np.asarray(dataset.train['x'][:limit]), 'train'


def evaluate_rows(config, workdir, dataset, mesh, step=None):
  """Report rows for the VAE: ELBO and IWAE log-likelihood on held-out data,
  plus the manifold picture for a 2-D latent. Returns (rows, images)."""
  state = load_vae(config, workdir, dataset, mesh, step)
  module, params, v = state.module, state.params, config.vae
  x, split = held_out(dataset)
  bs = v.eval_batch_size
  key = jax.random.PRNGKey(config.eval.seed)
  k = v.iwae_samples

  @jax.jit
  def scores(params, xb, key):
    k_e, k_i = jax.random.split(key)
    # The ELBO averaged over K draws: the bound, with little Monte Carlo
    # noise, on the same footing as the K-sample IWAE estimate.
    e = vae.elbo(module, params, xb, k_e, k, v.likelihood)
    i = vae.iwae(module, params, xb, k_i, k, v.likelihood)
    return e, i

  elbos, lls = [], []
  n = len(x)
  for start in range(0, n, bs):
    xb = x[start:start + bs]
    pad = bs - len(xb)
    xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
    e, i = scores(params, jnp.asarray(xb), jax.random.fold_in(key, start))
    elbos.append(np.asarray(e)[:bs - pad])
    lls.append(np.asarray(i)[:bs - pad])
  elbo, ll = np.concatenate(elbos), np.concatenate(lls)
  metrics = {'elbo': float(np.mean(elbo)), 'log_likelihood': float(np.mean(ll))}
  logging.info('vae (latent %d) on %d %s examples: ELBO %.3f, IWAE(K=%d) '
               'log-likelihood %.3f nats', v.latent_dim, n, split,
               metrics['elbo'], k, metrics['log_likelihood'])
  row = {'model': 'vae', 'sampler': 'iwae', 'steps': 1, 'metrics': metrics,
         'setting': dict(setting(config), iwae_samples=k, split=split,
                         num_examples=int(n))}
  images = {}
  if jax.process_index() == 0:
    samples = _prior_samples(config, module, params, 100, config.eval.seed)
    plots.save_samples(samples, os.path.join(workdir, 'samples_vae.png'),
                       f'VAE samples (latent {v.latent_dim})')
    images['VAE samples'] = 'samples_vae.png'
    if v.latent_dim == 2 and samples.ndim == 4:
      save_manifold(config, module, params,
                    os.path.join(workdir, 'vae_manifold.png'))
      images['VAE latent manifold'] = 'vae_manifold.png'
  return [row], images
