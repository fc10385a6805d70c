"""The VAE (methods/vae.py): AEVB training in W/vae, its report rows, and
the latent space it publishes for latent diffusion.

Evaluation scores the held-out split with the ELBO (estimator B averaged
over `iwae_samples` draws: the bound up to Monte Carlo error) and the IWAE
log-likelihood with K = `vae.iwae_samples`, in nats per datapoint, and
draws the decoded latent manifold when the latent is 2-D.

The latent of an example is the encoder's mean times one factor that makes
the latents' standard deviation the denoiser's sigma_data (the scale the
diffusion settings assume). The factor is recomputed from the VAE and the
training data, so it needs no file. `latent.vae_checkpoint` names a VAE
trained elsewhere instead of training one.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mmd_jax.workdir import fs
from mmd_jax.run.checks import need, one_of, positive_int
from mmd_jax.evaluation import plots
from mmd_jax.methods import vae
from mmd_jax.models import diffusers_latent, diffusers_vae
from mmd_jax.models.vae import ARCHS, LIKELIHOODS, VAE as VAEModule
from mmd_jax.numerics.space import LatentSpace
from mmd_jax.plugins import base, register


def module_for(cfg, data) -> VAEModule:
  v = cfg.vae
  return VAEModule(example_shape=tuple(data.example_shape),
                   latent_dim=v.latent_dim, arch=v.arch, hidden=v.hidden,
                   likelihood=v.likelihood)


def setting(cfg) -> dict:
  v = cfg.vae
  return {'latent_dim': v.latent_dim, 'arch': v.arch, 'hidden': v.hidden,
          'likelihood': v.likelihood}


# Jitted once per VAE: evaluation decodes every row's samples, and periodic
# quality decodes every few thousand steps.
@functools.lru_cache(maxsize=8)
def _encoder(module):
  return jax.jit(lambda p, x: vae.encode_mean(module, p, x))


@functools.lru_cache(maxsize=8)
def _decoder(module, likelihood: str):
  return jax.jit(lambda p, z: vae.decode_mean(module, p, z, likelihood))


def held_out(data, limit: int = 10_000):
  """(x, split name): the test split where there is one."""
  test = data.test
  if isinstance(test, dict):
    return np.asarray(test['x'][:limit]), 'test'
  if test is not None and hasattr(test, 'take'):
    return np.asarray(test.take(np.arange(min(limit, len(test))))['x']), 'test'
  return np.asarray(data.train['x'][:limit]), 'train'


class VAE(base.Method):
  name = 'vae'
  sections = ('vae', 'latent')
  provides = (base.SPACE,)
  in_space = False   # it trains on the data and defines the space
  # bench compares diffusion steps with the teacher's; `--only=vae` still
  # times this one.
  benched = False

  def validate(self, cfg, data, used=True):
    v = cfg.vae
    for key in ('latent_dim', 'hidden', 'num_samples', 'batch_size',
                'num_train_steps', 'iwae_samples', 'eval_batch_size'):
      positive_int(cfg, f'vae.{key}')
    one_of(cfg, 'vae.arch', ARCHS)
    one_of(cfg, 'vae.likelihood', LIKELIHOODS)
    one_of(cfg, 'vae.optimizer', ('adam', 'adagrad'))
    need(v.learning_rate > 0, 'vae.learning_rate',
         f'must be > 0, got {v.learning_rate}')
    need(v.iwae_samples % min(100, v.iwae_samples) == 0, 'vae.iwae_samples',
         f'must be below 100 or a multiple of 100, got {v.iwae_samples}')
    if not used:
      return
    ckpt = self._checkpoint(cfg)
    if ckpt:
      need(fs.isdir(ckpt), 'latent.vae_checkpoint',
           f'{ckpt!r} is neither a VAE stage directory nor a diffusers '
           'AutoencoderKL (or pipeline) directory')
      if self._diffusers(cfg):
        self.space_data(cfg, data)
        return
    need(data.kind != 'points' or v.arch == 'mlp', 'vae.arch',
         'conv needs image data; use mlp for points')
    need(v.batch_size % cfg.grad_accum_steps == 0, 'grad_accum_steps',
         f'vae.batch_size={v.batch_size} is not divisible into '
         f'{cfg.grad_accum_steps} micro-batches')

  def _checkpoint(self, cfg) -> str:
    lat = cfg.get('latent')
    return lat.get('vae_checkpoint', '') if lat is not None else ''

  def _diffusers(self, cfg) -> str | None:
    """The diffusers AutoencoderKL directory latent.vae_checkpoint names."""
    return diffusers_latent.vae_dir(self._checkpoint(cfg))

  def space_data(self, cfg, data):
    src = self._diffusers(cfg)
    if src is None:
      return None
    module = diffusers_latent.module_of(src)
    diffusers_latent.check_data(module, data)
    return diffusers_latent.space(module, None, data.example_shape
                                  ).encode_dataset(data)

  def jobs(self, cfg):
    v, ckpt = cfg.vae, self._checkpoint(cfg)
    ckpt = fs.absolute(ckpt) if ckpt else ''
    src = self._diffusers(cfg) if ckpt else None
    if src is None:   # trained here, or an mmd_jax VAE stage read in place
      where = dict(setting=setting(cfg), source=ckpt, stage_dir=ckpt)
    else:             # a diffusers VAE, imported into W/vae
      c = diffusers_latent.module_of(src).cfg
      where = dict(setting={'arch': 'diffusers_' + diffusers_latent.CLASS_NAME,
                            'latent_channels': c.latent_channels,
                            'scaling_factor': c.scaling_factor,
                            'shift_factor': c.shift_factor},
                   source=fs.absolute(src), stage_dir='')
    return [base.Job(
        method=self.name, name='vae', model='vae', steps=None,
        num_steps=v.num_train_steps, batch_size=v.batch_size,
        batch_key='vae.batch_size', data_salt=3,
        micro_batches=cfg.grad_accum_steps,
        source_key='latent.vae_checkpoint', **where)]

  def bind(self, job, cfg, ctx, artifacts):
    if job.setting.get('arch', '').startswith('diffusers_'):
      return self._bind_diffusers(job, ctx)
    v = cfg.vae
    module = module_for(cfg, ctx.data)
    hp = vae.VAEHParams(num_samples=v.num_samples, likelihood=v.likelihood,
                        grad_accum_steps=cfg.grad_accum_steps)
    tx = (optax.adagrad(v.learning_rate) if v.optimizer == 'adagrad'
          else optax.adam(v.learning_rate))

    def preview(state, path):
      self._pictures(cfg, state, path,
                     os.path.join(os.path.dirname(path), 'manifold.png'),
                     cfg.seed)
    return base.Bound(
        init=lambda key, batch, frozen: vae.init(key, module, hp, tx, batch),
        step=vae.step,
        publish=functools.partial(self._publish, job, cfg, ctx),
        report=functools.partial(self._report, job, cfg, ctx),
        preview=preview)

  def _bind_diffusers(self, job, ctx):
    """An imported diffusers VAE: loaded once into W/vae, whose kept
    config.json rebuilds its module later; it publishes the space only."""
    stage_dir = os.path.join(ctx.workdir, job.name)
    module = diffusers_latent.module_of(diffusers_latent.kept_or_source(
        stage_dir, job.source))
    tx = optax.set_to_zero()

    def init(key, batch, frozen):
      params = diffusers_vae.abstract_params(module)
      params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params)
      return vae.VAEState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=key, module=module,
                          hparams=vae.VAEHParams(), tx=tx)

    def load(state):
      _, params = diffusers_vae.from_pretrained(job.source)
      if jax.process_index() == 0:
        diffusers_latent.keep_config(job.source, stage_dir)
      logging.info('VAE imported from %s', job.source)
      return state.replace(params=jax.tree.map(
          lambda p, old: jax.device_put(p, old.sharding), params,
          state.params))

    def publish(state):
      abstract = base.is_abstract(state.params)
      return {base.SPACE: diffusers_latent.space(
          module, None if abstract else state.params, ctx.data.example_shape,
          cache_dir='' if abstract else stage_dir)}

    def step(state, batch, key):
      raise RuntimeError('an imported diffusers VAE is not trained here')
    return base.Bound(init=init, step=step, publish=publish, load=load)

  def _publish(self, job, cfg, ctx, state):
    v = cfg.vae
    if base.is_abstract(state.params):   # the space's shape, for describe
      return {base.SPACE: LatentSpace(f'vae{v.latent_dim}', v.latent_dim,
                                      None, None)}
    raw = LatentSpace(f'vae{v.latent_dim}', v.latent_dim,
                      _encoder(state.module),
                      _decoder(state.module, v.likelihood), state.params)
    std = float(np.std(raw.encode(ctx.data.train['x'])))
    scale = ctx.spec.sigma_data / max(std, 1e-8)
    logging.info('latent space: VAE %s, latent dim %d, encoder-mean std '
                 '%.4f, scale %.4f', job.stage_dir or job.name, v.latent_dim,
                 std, scale)
    return {base.SPACE: LatentSpace(raw.name, v.latent_dim, raw.encoder,
                                    raw.decoder, state.params, scale)}

  def network_sizes(self, cfg, ctx):
    module = module_for(cfg, ctx.data)
    x = jnp.zeros((1,) + tuple(ctx.data.example_shape))
    z = jnp.zeros((1, module.latent_dim))
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, z)
    return {'vae': int(sum(l.size for l in jax.tree.leaves(shapes)))}

  def _prior_samples(self, cfg, state, n: int, seed: int):
    z = jax.random.normal(jax.random.PRNGKey(seed),
                          (n, state.module.latent_dim))
    return np.asarray(_decoder(state.module, cfg.vae.likelihood)(
        state.params, z))

  def _save_manifold(self, cfg, state, path, n: int = 20):
    """Decoder means on an n x n grid of Gaussian quantiles of a 2-D latent
    (Kingma & Welling's figure 4)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    q = norm.ppf(np.linspace(0.05, 0.95, n))
    zz = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2).astype(
        np.float32)
    images = np.asarray(_decoder(state.module, cfg.vae.likelihood)(
        state.params, jnp.asarray(zz)))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(plots.image_grid(images, ncol=n), cmap='gray', vmin=0, vmax=1)
    ax.axis('off')
    ax.set_title('VAE: decoded 2-D latent manifold', fontsize=10)
    fig.tight_layout()
    fs.save_figure(fig, path, dpi=110)
    plt.close(fig)

  def _pictures(self, cfg, state, samples_path, manifold_path, seed):
    """Prior samples, and the manifold of a 2-D latent; returns whether the
    manifold was drawn."""
    x = self._prior_samples(cfg, state, 100, seed)
    plots.save_samples(x, samples_path,
                       f'VAE samples (latent {cfg.vae.latent_dim})')
    if cfg.vae.latent_dim == 2 and x.ndim == 4:
      self._save_manifold(cfg, state, manifold_path)
      return True
    return False

  def _report(self, job, cfg, ctx, state, seed):
    v = cfg.vae
    module, params = state.module, state.params
    x, split = held_out(ctx.data)
    bs, k = v.eval_batch_size, v.iwae_samples
    key = jax.random.PRNGKey(seed)

    @jax.jit
    def scores(params, xb, key):
      k_e, k_i = jax.random.split(key)
      # The ELBO averaged over K draws: the bound, with little Monte Carlo
      # noise, on the same footing as the K-sample IWAE estimate.
      return (vae.elbo(module, params, xb, k_e, k, v.likelihood),
              vae.iwae(module, params, xb, k_i, k, v.likelihood))

    elbos, lls = [], []
    n = len(x)
    for start in range(0, n, bs):
      xb = x[start:start + bs]
      pad = bs - len(xb)
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
      e, i = scores(params, jnp.asarray(xb), jax.random.fold_in(key, start))
      elbos.append(np.asarray(e)[:bs - pad])
      lls.append(np.asarray(i)[:bs - pad])
    metrics = {'elbo': float(np.mean(np.concatenate(elbos))),
               'log_likelihood': float(np.mean(np.concatenate(lls)))}
    logging.info('vae (latent %d) on %d %s examples: ELBO %.3f, IWAE(K=%d) '
                 'log-likelihood %.3f nats', v.latent_dim, n, split,
                 metrics['elbo'], k, metrics['log_likelihood'])
    row = {'model': job.model, 'sampler': 'iwae', 'steps': 1,
           'metrics': metrics,
           'setting': dict(setting(cfg), iwae_samples=k, split=split,
                           num_examples=int(n))}
    images = {}
    if jax.process_index() == 0:
      manifold = self._pictures(
          cfg, state, os.path.join(ctx.workdir, 'samples_vae.png'),
          os.path.join(ctx.workdir, 'vae_manifold.png'), seed)
      images['VAE samples'] = 'samples_vae.png'
      if manifold:
        images['VAE latent manifold'] = 'vae_manifold.png'
    return [row], images


register(VAE())
