"""How good is the learned 'fake' score where the gradient needs it?

  python -m mmd_jax.science.fake_score_check --stage_dir=W/diff_instruct_k1 \
      [--logsnrs=-4,-2,0,2] [--output=F.json]

For a one-step generator trained on a 2-D toy mixture (the `emd` and
`diff_instruct` stages), the generator's own diffused distribution has an
exact denoiser x_G by quadrature over its 2-D input (quadrature.py).
Diff-Instruct's and EMD's gradients both rest on d = s_T - s_S ∝ x_T - x_S,
where x_S is the score network standing in for x_G. At noisy copies of
each mode's data this reports
  - signal: rms |x_T - x_G|, what d should carry (x_T the exact teacher);
  - error: rms |x_S - x_G|, the score network's error;
  - cos: the cosine between x_T - x_S (used) and x_T - x_G (right).
Where error is as large as signal, neither method's gradient (nor EMD's
E-step target, which is built from d) knows which way mass should move.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mmd_jax.numerics import analytic, diffusion, quadrature
from mmd_jax.workdir import fs


def _rms(v):
  return float(np.sqrt(np.mean(np.sum(np.square(v), axis=1))))


def compare(x_teacher, x_student, x_generator) -> dict:
  used, right = x_teacher - x_student, x_teacher - x_generator
  cos = float(np.sum(used * right) / (np.linalg.norm(used)
                                      * np.linalg.norm(right) + 1e-30))
  return {'signal': _rms(right), 'error': _rms(x_student - x_generator),
          'cos': cos}


def check(stage_dir: str, lams, points: int = 400, grid: int = 500,
          seed: int = 0) -> list[dict]:
  """One row per (log-SNR, mode): signal, error and cos (module doc)."""
  from mmd_jax.run.stage_dir import open_stage
  from mmd_jax.data import toy2d
  from mmd_jax.methods import emd

  stage = open_stage(stage_dir)
  env, state = stage.env, stage.state
  kind, _, toy = env.config.data.name.partition('/')
  toy = toy or env.config.data.toy_name
  if kind != 'toy2d' or not hasattr(state, 'score_params'):
    raise SystemExit(f'--stage_dir: {stage_dir} is not a one-step generator '
                     'on a toy2d mixture')
  spec, hp = stage.ctx.spec, state.hparams
  mixture = toy2d.get_mixture(toy)
  exact = analytic.AnalyticMixture.of(mixture)
  z, logw = quadrature.z_grid(grid)
  gen = jax.jit(lambda zz: emd.generator(spec, state.generator_params, zz,
                                         None, hp.logsnr_generator))
  g_points = jnp.concatenate([gen(z[i:i + 25_000])
                              for i in range(0, len(z), 25_000)])
  x_gen = jax.jit(lambda x, lam: quadrature.denoise(g_points, logw, x, lam))
  rng = np.random.default_rng(seed)
  rows = []
  for lam in lams:
    a, s = (float(v) for v in diffusion.alpha_sigma(jnp.float32(lam)))
    lv = jnp.full((points,), lam, jnp.float32)
    for m, (mu, sd, w) in enumerate(zip(mixture.means, mixture.stds,
                                        mixture.weights)):
      x0 = mu + sd * rng.standard_normal((points, 2))
      x_t = (a * x0 + s * rng.standard_normal((points, 2))).astype(np.float32)
      row = compare(np.asarray(analytic.x_hat(exact, x_t, lv)),
                    np.asarray(spec.x_hat(state.score_params, x_t, lv, None)),
                    np.asarray(x_gen(x_t, lv)))
      rows.append(dict(row, logsnr=float(lam), mode=m, weight=float(w)))
  return rows


def main(argv):
  del argv
  f = flags.FLAGS
  rows = check(f.stage_dir, [float(v) for v in f.logsnrs], f.points, f.grid)
  print('| λ | mode (weight) | signal | error | cos |\n|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['logsnr']:g} | {r['mode']} ({r['weight']:.3f}) | "
          f"{r['signal']:.4f} | {r['error']:.4f} | {r['cos']:.2f} |")
  if f.output:
    fs.write_text(f.output, json.dumps({'stage_dir': f.stage_dir,
                                          'rows': rows}, indent=2))


if __name__ == '__main__':
  # Defined here, not on import: tests import this beside other CLIs.
  flags.DEFINE_string('stage_dir', None, 'A trained emd or diff_instruct '
                      'stage on a toy2d mixture.')
  flags.DEFINE_list('logsnrs', ['-4', '-2', '0', '2'], 'Log-SNRs.')
  flags.DEFINE_integer('points', 400, 'Test points per mode.')
  flags.DEFINE_integer('grid', 500, 'Quadrature points per z axis.')
  flags.DEFINE_string('output', '', 'Also write the rows as JSON.')
  flags.mark_flag_as_required('stage_dir')
  app.run(main)
