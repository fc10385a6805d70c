"""The DNCP benchmark: effective samples per gradient evaluation of the
centred and the non-centred sampler on linear dynamical systems.

  python -m mmd_jax.science.dncp --output_dir=DIR [--depths=2,4 --num_ratios=9]

Model (mcmc.GaussianChain): z_1 ~ N(0, 1), z_i | z_{i-1} ~ N(z_{i-1}, s_z^2)
for i = 2..D, x | z_D ~ N(z_D, s_x^2), with x = 1 observed and s_x = 1.
docs/ALGORITHMS.md §5 predicts the non-centred sampler mixes better when
s_z << s_x (the prior ties z_i to z_{i-1}; eps_i is nearly its prior) and
the centred one when s_z >> s_x (the data pin z_D, which the non-centred
sampler can only reach by moving every eps together).

Sampler: HMC, each parameterisation tuned for itself: the best ESS per
gradient over a grid of step sizes and leapfrog counts, so neither loses to
a setting chosen for the other. ESS is the smallest over z's coordinates
(read in z space for both samplers), summed over chains, divided by every
gradient evaluation spent, burn-in included. Writes DIR/dncp.json and
DIR/dncp.png.
"""
from __future__ import annotations

import functools
import json
import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.workdir import fs
from mmd_jax.numerics import mcmc

_OUT = flags.DEFINE_string('output_dir', None, 'Where to write dncp.json and '
                           'dncp.png.')
_DEPTHS = flags.DEFINE_list('depths', ['2', '4'], 'Chain depths D.')
_RATIOS = flags.DEFINE_integer('num_ratios', 9, 'Values of s_z / s_x, '
                               'log-spaced over [1e-2, 1e2].')
_CHAINS = flags.DEFINE_integer('num_chains', 64, 'Parallel chains per run.')
_SAMPLES = flags.DEFINE_integer('num_samples', 400, 'Samples per chain '
                                '(after burn-in).')
flags.mark_flags_as_required(['output_dir'])

STEP_SIZES = tuple(float(s) for s in np.logspace(-3.5, 0.5, 9))
LEAPFROGS = (4, 16)
BURN_IN = 100


@functools.partial(jax.jit,
                   static_argnames=('depth', 'centred', 'num_leapfrog',
                                    'num_chains', 'num_samples'))
def _run(ratio, step, key, *, depth, centred, num_leapfrog, num_chains,
         num_samples):
  scales = jnp.concatenate([jnp.ones(1), jnp.full((depth - 1,), ratio)])
  model = mcmc.GaussianChain(scales=scales, obs_scale=1.0, x=1.0)
  log_prob = model.log_prob_centred if centred else model.log_prob_noncentred

  def chain(key):
    k0, k1 = jax.random.split(key)
    # Start at an exact posterior draw, so burn-in is not what is measured.
    mean, chol = _posterior_chol(scales)
    z0 = mean + chol @ jax.random.normal(k0, (depth,))
    x0 = z0 if centred else model.to_eps(z0)
    out = mcmc.hmc(log_prob, x0, k1, step, num_leapfrog,
                   BURN_IN + num_samples)
    s = out.samples[BURN_IN:]
    return (s if centred else model.to_z(s)), out.accept_rate

  z, acc = jax.vmap(chain)(jax.random.split(key, num_chains))
  return z, jnp.mean(acc)


def _posterior_chol(scales):
  d = scales.shape[0]
  lower = jnp.tril(jnp.ones((d, d))) * scales
  prior = lower @ lower.T
  s = prior[-1, -1] + 1.0
  gain = prior[:, -1] / s
  cov = prior - jnp.outer(gain, prior[-1])
  return gain * 1.0, jnp.linalg.cholesky(cov + 1e-12 * jnp.eye(d))


def measure(depth: int, ratio: float, centred: bool, num_chains: int,
            num_samples: int, seed: int = 0) -> dict:
  best = {'ess_per_grad': -1.0}
  for num_leapfrog in LEAPFROGS:
    for step in STEP_SIZES:
      z, acc = _run(ratio, step, jax.random.PRNGKey(seed), depth=depth,
                    centred=centred, num_leapfrog=num_leapfrog,
                    num_chains=num_chains, num_samples=num_samples)
      ess = float(np.min(mcmc.effective_sample_size(np.asarray(z))))
      grads = num_chains * (1 + (BURN_IN + num_samples) * num_leapfrog)
      r = {'ess_per_grad': ess / grads, 'ess': ess, 'grad_evals': grads,
           'step_size': step, 'num_leapfrog': num_leapfrog,
           'accept_rate': float(acc)}
      if r['ess_per_grad'] > best['ess_per_grad']:
        best = r
  return best


def run(depths, num_ratios, num_chains, num_samples) -> dict:
  ratios = [float(r) for r in np.logspace(-2, 2, num_ratios)]
  out = {'model': 'z1 ~ N(0,1); z_i|z_{i-1} ~ N(z_{i-1}, s_z^2); '
                  'x|z_D ~ N(z_D, s_x^2); s_x = 1, x = 1',
         'sampler': f'HMC tuned per point over step sizes {STEP_SIZES} and '
                    f'leapfrog counts {LEAPFROGS}',
         'num_chains': num_chains, 'num_samples': num_samples,
         'burn_in': BURN_IN, 'ratios': ratios, 'depths': {}}
  for depth in depths:
    rows = []
    for ratio in ratios:
      t0 = time.time()
      c = measure(depth, ratio, True, num_chains, num_samples)
      n = measure(depth, ratio, False, num_chains, num_samples)
      rows.append({'ratio': ratio, 'centred': c, 'noncentred': n,
                   'noncentred_over_centred':
                       n['ess_per_grad'] / max(c['ess_per_grad'], 1e-300)})
      logging.info('D=%d s_z/s_x=%-8.3g ESS/grad centred %.2e non-centred '
                   '%.2e (ratio %.3g) [%.0fs]', depth, ratio,
                   c['ess_per_grad'], n['ess_per_grad'],
                   rows[-1]['noncentred_over_centred'], time.time() - t0)
    out['depths'][str(depth)] = rows
  return out


def plot(result: dict, path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (depth, rows) in enumerate(result['depths'].items()):
    r = [x['ratio'] for x in rows]
    for name, style in (('centred', '--'), ('noncentred', '-')):
      ax.loglog(r, [x[name]['ess_per_grad'] for x in rows], style,
                marker='o' if name == 'centred' else 's', color=f'C{i}',
                label=f'{name}, D={depth}')
  ax.set_xlabel('σ_z / σ_x')
  ax.set_ylabel('ESS per gradient evaluation')
  ax.set_title('HMC: centred vs non-centred (DNCP)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  fs.makedirs(_OUT.value)
  result = run([int(d) for d in _DEPTHS.value], _RATIOS.value,
               _CHAINS.value, _SAMPLES.value)
  fs.write_text(os.path.join(_OUT.value, 'dncp.json'),
                json.dumps(result, indent=2))
  plot(result, os.path.join(_OUT.value, 'dncp.png'))
  print(f"{'D':>2s} {'s_z/s_x':>8s} {'centred':>10s} {'non-centred':>12s} "
        f"{'NC/C':>8s}")
  for depth, rows in result['depths'].items():
    for x in rows:
      print(f"{depth:>2s} {x['ratio']:8.3g} {x['centred']['ess_per_grad']:10.2e}"
            f" {x['noncentred']['ess_per_grad']:12.2e} "
            f"{x['noncentred_over_centred']:8.3g}")


if __name__ == '__main__':
  app.run(main)
