"""EMD's E-step against its exact target (docs/where_emd_should_win.md):

  python -m mmd_jax.science.estep_check --output_dir=DIR [--toy=imbalanced8]

A case where pi_t(x_t, z) ∝ p_teacher,t(x_t) p_theta(z | x_t) can be sampled
exactly: the teacher is the toy mixture's exact denoiser (analytic.py) and
the generator is linear, g(z) = A z + b, away from its best fit (as
mid-training; at the fit the exact gradient is zero). Its diffused distribution N(alpha b, alpha^2 A A^T + sigma^2 I)
gives the student score exactly too, so d = s_T - s_S has no network error.
Exact target draws: x_t from the diffused mixture, then z | x_t from the
linear-Gaussian posterior.

For each log-SNR, K, and parameterisation (eps / x), it runs methods/emd.py's
own Langevin chain from the generator's joint and reports
  - the energy distance between the chain's (x_t, z) after K steps and exact
    target draws (4-D), with the target-vs-target floor;
  - the M-step gradient with respect to (A, b): L = -(alpha/sigma) eps_m^T
    g(z_K), with and without noise cancellation, against the exact
    expectation E_pi[-(alpha/sigma) eps^T g(z)] gradient (what the EM
    fixed point needs): relative bias |E_chain - E_exact| / |E_exact| and
    the per-chain relative standard deviation.
K = 1 with gamma_eps = 1, gamma_z = 0 and cancellation is Diff-Instruct.
Writes DIR/estep_check.json and DIR/estep_check.png.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from mmd_jax.numerics import analytic
from mmd_jax.workdir import fs
from mmd_jax.data import toy2d
from mmd_jax.evaluation import toy_metrics
from mmd_jax.methods import emd

_OUT = flags.DEFINE_string('output_dir', None, 'Where to write the results.')
_TOY = flags.DEFINE_string('toy', 'imbalanced8', 'toy2d mixture.')
_LAMS = flags.DEFINE_list('logsnrs', ['2', '0', '-2'], 'Log-SNRs to test.')
_KS = flags.DEFINE_list('ks', ['1', '4', '16', '64'], 'Langevin steps K.')
_CHAINS = flags.DEFINE_integer('chains', 200_000, 'Chains per setting.')
_GE = flags.DEFINE_float('gamma_eps', 0.3, 'Langevin eps step.')
_GZ = flags.DEFINE_float('gamma_z', 0.01, 'Langevin z step.')
_INTEGRATOR = flags.DEFINE_enum('integrator', 'euler', list(emd.INTEGRATORS),
                                'The chain\'s integrator (emd.integrator).')
_ED_N = flags.DEFINE_integer('ed_samples', 3000, 'Samples per energy '
                             'distance (its cost is quadratic).')


def _alpha_sigma(lam: float):
  """diffusion.alpha_sigma for one Python float, as constants (also when
  called while a chain is traced)."""
  return (float(np.sqrt(1 / (1 + np.exp(-lam)))),
          float(np.sqrt(1 / (1 + np.exp(lam)))))


@dataclasses.dataclass(frozen=True)
class Linear:
  """g(z) = A z + b, and what the E-step needs of it, in closed form."""
  A: np.ndarray
  b: np.ndarray

  @classmethod
  def off_fit(cls, mixture, rng, n=200_000):
    """The moment fit is the Gaussian family's maximum-likelihood point,
    where the exact M-step gradient vanishes; a generator mid-training is
    not there: this one is shrunk to 60% and shifted by 0.5."""
    x = mixture.sample(rng, n).astype(np.float64)
    return cls(0.6 * np.linalg.cholesky(np.cov(x.T)),
               x.mean(0) + np.array([0.5, 0.0]))

  def __call__(self, z):
    return z @ jnp.asarray(self.A).T + jnp.asarray(self.b)

  def student_x_hat(self, x_t, lam: float):
    """E_theta[g(z) | x_t] for the generator's own diffused distribution
    (one log-SNR for the batch)."""
    a, s = _alpha_sigma(lam)
    cov = self.A @ self.A.T
    # x = b + A z; Cov[x, x_t] = a cov; Var[x_t] = a^2 cov + s^2 I.
    gain = np.asarray(a * cov @ np.linalg.inv(a * a * cov + s * s * np.eye(2)))
    return jnp.asarray(self.b) + (x_t - a * jnp.asarray(self.b)) @ gain.T

  def posterior(self, x_t, lam):
    """Mean (N, 2) and covariance (2, 2) of z | x_t."""
    a, s = _alpha_sigma(lam)
    prec = np.eye(2) + (a * a / (s * s)) * self.A.T @ self.A
    cov = np.linalg.inv(prec)
    mean = (x_t - a * self.b) @ ((a / (s * s)) * self.A) @ cov.T
    return mean, cov


def exact_target(mixture, gen: Linear, lam, n, rng):
  """(x_t, z) from pi_t exactly."""
  a, s = _alpha_sigma(lam)
  x = mixture.sample(rng, n).astype(np.float64)
  x_t = a * x + s * rng.standard_normal(x.shape)
  mean, cov = gen.posterior(x_t, lam)
  z = mean + rng.standard_normal(x.shape) @ np.linalg.cholesky(cov).T
  return x_t, z


def m_step_grads(gen: Linear, lam, eps, z):
  """Per-chain gradient of -(alpha/sigma) eps^T g(z) w.r.t. (A, b): (N, 6)."""
  a, s = _alpha_sigma(lam)
  c = -(a / s)
  g_a = c * eps[:, :, None] * z[:, None, :]
  return np.concatenate([g_a.reshape(len(z), -1), c * eps], axis=1)


def chain(hp, gen: Linear, mix, lam, n, key):
  """The method's own Langevin chain with exact d; returns (x_t, z, eps_K,
  eps_m) as float64 numpy."""
  lam_b = jnp.full((n,), lam, jnp.float32)

  a, s = _alpha_sigma(lam)

  def diff(x_t):   # exact s_T - s_S, as emd.score_difference forms it
    return (a / (s * s)) * (analytic.x_hat(mix, x_t, lam_b)
                            - gen.student_x_hat(x_t, lam))

  kz, ke, kc = jax.random.split(key, 3)
  z0 = jax.random.normal(kz, (n, 2))
  e0 = jax.random.normal(ke, (n, 2))
  r = jax.jit(lambda z, e, k: emd.langevin(hp, gen, diff, z, e, lam_b, k))(
      z0, e0, kc)
  x_t = a * gen(r.z) + s * r.eps
  f64 = lambda v: np.asarray(v, np.float64)
  return f64(x_t), f64(r.z), f64(r.eps), f64(r.eps - r.cancel)


def run(toy: str, logsnrs, ks, chains: int, gamma_eps: float,
        gamma_z: float, ed_samples: int, integrator: str = 'euler') -> dict:
  rng = np.random.default_rng(0)
  mixture = toy2d.get_mixture(toy)
  mix = analytic.AnalyticMixture.of(mixture)
  gen = Linear.off_fit(mixture, rng)
  out = {'toy': toy, 'generator': {'A': gen.A.tolist(), 'b': gen.b.tolist()},
         'chains': chains, 'gamma_eps': gamma_eps, 'gamma_z': gamma_z,
         'integrator': integrator,
         'rows': []}
  for lam in logsnrs:
    xt, z = exact_target(mixture, gen, lam, chains, rng)
    a, s = _alpha_sigma(lam)
    exact_g = m_step_grads(gen, lam, (xt - a * np.asarray(gen(z))) / s, z)
    exact_mean = exact_g.mean(0)
    ref = np.concatenate([xt, z], 1)
    ref2 = np.concatenate(exact_target(mixture, gen, lam, ed_samples, rng), 1)
    floor = toy_metrics.energy_distance(ref[:ed_samples], ref2)
    for param in emd.PARAMETERIZATIONS:
      for k in ks:
        settings = [('emd', dict(langevin_steps=k, gamma_eps=gamma_eps,
                                 gamma_z=gamma_z, integrator=integrator))]
        if k == 1 and param == 'eps':
          settings.append(('diff_instruct', emd.DIFF_INSTRUCT))
        for label, kw in settings:
          hp = emd.EMDHParams(**dict(kw, parameterization=param))
          t0 = time.time()
          cx, cz, eps_k, eps_m = chain(hp, gen, mix, lam, chains,
                                       jax.random.PRNGKey(k))
          ed = toy_metrics.energy_distance(
              np.concatenate([cx, cz], 1)[:ed_samples], ref[-ed_samples:])
          row = {'logsnr': lam, 'parameterization': param, 'K': k,
                 'setting': label, 'energy_distance': ed, 'ed_floor': floor}
          norm = np.linalg.norm(exact_mean)
          for name, e in (('cancel', eps_m), ('nocancel', eps_k)):
            g = m_step_grads(gen, lam, e, cz)
            row[f'grad_bias_{name}'] = float(
                np.linalg.norm(g.mean(0) - exact_mean) / norm)
            row[f'grad_rel_std_{name}'] = float(
                np.linalg.norm(g.std(0)) / norm)
          row['mc_se_of_exact'] = float(
              np.linalg.norm(exact_g.std(0)) / np.sqrt(chains) / norm)
          out['rows'].append(row)
          logging.info('lam=%g %s K=%d %s: ED %.4f (floor %.4f), grad bias '
                       '%.3f cancel / %.3f not [%.1fs]', lam, param, k,
                       label, ed, floor, row['grad_bias_cancel'],
                       row['grad_bias_nocancel'], time.time() - t0)
  return out


def table(result: dict) -> str:
  lines = ['| log-SNR | chain | K | setting | ED to target (floor) | '
           'grad bias, cancel | grad bias, no cancel | rel. std, cancel |',
           '|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(
        f"| {r['logsnr']:g} | {r['parameterization']} | {r['K']} | "
        f"{r['setting']} | {r['energy_distance']:.4f} ({r['ed_floor']:.4f}) "
        f"| {r['grad_bias_cancel']:.3f} | {r['grad_bias_nocancel']:.3f} | "
        f"{r['grad_rel_std_cancel']:.1f} |")
  return '\n'.join(lines)


def plot(result: dict, path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lams = sorted({r['logsnr'] for r in result['rows']}, reverse=True)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for i, lam in enumerate(lams):
    for param, style in (('eps', '-'), ('x', '--')):
      rows = [r for r in result['rows'] if r['logsnr'] == lam and
              r['parameterization'] == param and r['setting'] == 'emd']
      ks = [r['K'] for r in rows]
      axes[0].semilogx(ks, [r['energy_distance'] for r in rows], style,
                       marker='o', color=f'C{i}',
                       label=f'log-SNR {lam:g}, {param}')
      axes[1].semilogx(ks, [r['grad_bias_cancel'] for r in rows], style,
                       marker='o', color=f'C{i}')
  axes[0].set(xlabel='Langevin steps K', ylabel='energy distance to pi_t')
  axes[1].set(xlabel='Langevin steps K', ylabel='M-step gradient bias')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fs.save_figure(fig, path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  result = run(_TOY.value, [float(v) for v in _LAMS.value],
               [int(v) for v in _KS.value], _CHAINS.value, _GE.value,
               _GZ.value, _ED_N.value, _INTEGRATOR.value)
  fs.makedirs(_OUT.value)
  fs.write_text(os.path.join(_OUT.value, 'estep_check.json'),
                json.dumps(result, indent=2))
  fs.write_text(os.path.join(_OUT.value, 'estep_check.md'), table(result))
  plot(result, os.path.join(_OUT.value, 'estep_check.png'))
  print(table(result))


if __name__ == '__main__':
  flags.mark_flags_as_required(['output_dir'])
  app.run(main)
