"""2-D toy: the asymmetric 6-mode mixture of docs/ALGORITHMS.md §6.

Variants (`--config=configs/toy2d.py:ARG`):
  (none)  the default run: teacher (15k steps) then evaluate.
  mm      teacher, then moment-matching students (alternating and
          parameter-space) at k in {1, 2, 4, 8}, then evaluate.
  emd     teacher, then one-step generators: Diff-Instruct (the EMD K=1
          baseline) and EMD with the shipped settings, then evaluate.
  emd_ablation  emd plus one generator per EMD setting in the sweep below
          (K, parameterisation, noise cancellation, step sizes).
  imbalanced  teacher, Diff-Instruct and EMD on the 8-mode mixture with
          weights spanning 80x, with the trained and the exact teacher,
          and the sweep of docs/where_emd_should_win.md (K, gamma_z, lambda*, exact fake score).
  leaderboard  one teacher; mm_alternating, mm_parameter, progressive and
          consistency students at k in {1, 2, 4, 8}, Diff-Instruct and EMD
          at k = 1, every one on the same budget of training examples
          (3000 steps x 512; progressive splits it over its 6 rounds from
          the teacher's 64-step DDIM), each trained 3 times (train_seeds)
          and scored over 3 evaluation seeds.
  tiny    a seconds-long run for tests; tiny_mm adds tiny students and
          tiny_emd tiny generators (with a one-entry sweep).
"""
from configs import default


def _emd(k, ge, gz, chain='eps', cancel='eps'):
  return (f'langevin_steps={k},gamma_eps={ge},gamma_z={gz},'
          f'parameterization={chain},noise_cancellation={cancel}')


# `emd_ablation`: one generator per setting, beside Diff-Instruct and the
# shipped config.emd (K=16, gamma_eps=0.3, gamma_z=0.01, (eps, z), cancel).
ABLATION = (
    _emd(1, 0.5, 0.01),                   # K
    _emd(2, 0.5, 0.01),
    _emd(4, 0.5, 0.01),
    _emd(8, 0.3, 0.01),
    _emd(8, 0.3, 0.0),                    # step sizes (gamma_eps, gamma_z)
    _emd(8, 0.5, 0.01),
    _emd(4, 0.5, 0.0),
    _emd(8, 0.3, 0.01, chain='x'),        # centred (x_t, z) chain
    _emd(8, 0.3, 0.01, cancel='none'),    # no noise cancellation
)


def imbalanced(c):
  """EMD against Diff-Instruct where mode-seeking must fail (8 modes,
  weights spanning 80x; docs/where_emd_should_win.md): each with the
  trained teacher, and a sweep
  with the mixture's exact teacher (emd.teacher=analytic), also with the
  exact fake score (emd.fake_score=quadrature). 3000 steps x 256 each,
  scored over 3 seeds of 16k samples (the rarest mode then holds ~90).
  About 1 hour per seed on 2 cores like those of that page's second table
  (about 3h on those of its first); its tables add --config.seed=1,
  and a 3x budget run (its command is on that page)."""
  c.data.toy_name = 'imbalanced8'
  c.stages = ('teacher', 'diff_instruct', 'emd', 'evaluate')
  di = _emd(1, 1.0, 0.0) + ',teacher=analytic'
  k16 = 'teacher=analytic'                               # shipped EMD
  c.emd.sweep = (
      di, k16, 'langevin_steps=4,' + k16, 'langevin_steps=32,' + k16,   # K
      'langevin_steps=1,' + k16,
      'gamma_z=0.05,' + k16, 'gamma_eps=0.1,' + k16, 'gamma_eps=0.6,' + k16,
      di + ',logsnr_generator=-2.0', k16 + ',logsnr_generator=-2.0',  # λ*
      di + ',logsnr_generator=-6.0', k16 + ',logsnr_generator=-6.0',
      di + ',score_updates=4', k16 + ',score_updates=4',      # fake score
      'langevin_steps=32,' + k16 + ',score_updates=4',
      di + ',fake_score=quadrature', k16 + ',fake_score=quadrature')
  c.distill.batch_size = 256
  c.eval.num_seeds = 3
  c.eval.num_samples = 16_000
  c.eval.batch_size = 4000
  c.eval.teacher_steps = (256,)


def get_config(arg=None):
  c = default.get_base_config()
  c.data.name = 'toy2d'
  c.data.toy_name = 'asymmetric_mixture'
  c.model.name = 'mlp'
  # 0.56M parameters, the embedding entering once: 16 ms/step on 2 cores,
  # so teacher + evaluate fit in 8 minutes. At equal cost this beat a
  # width-192 net conditioned in every block (ED 0.00014 vs 0.00035 at
  # 256 steps, 16k samples; floor 0.00009).
  c.model.width = 256
  c.model.num_blocks = 3
  c.model.block_conditioning = False
  c.teacher.num_train_steps = 15_000
  c.teacher.batch_size = 512
  c.teacher.learning_rate = 1e-3
  c.eval.num_samples = 4000
  # Moment matching (docs/ALGORITHMS.md §6): lr 1e-4, batch 512, flat w.
  c.distill.num_train_steps = 3000
  c.distill.batch_size = 512
  c.distill.learning_rate = 1e-4
  c.distill.warmup_steps = 200
  c.distill.sampling_steps = (1, 2, 4, 8)
  if arg in ('mm', 'tiny_mm'):
    c.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'evaluate')
  if arg in ('emd', 'emd_ablation', 'tiny_emd'):
    c.stages = ('teacher', 'diff_instruct', 'emd', 'evaluate')
  if arg == 'leaderboard':
    leaderboard(c)
  if arg == 'imbalanced':
    imbalanced(c)
  if arg == 'emd_ablation':
    c.emd.sweep = ABLATION
    # Half the :emd batch: 11 generators in about 40 minutes on 2 cores.
    c.distill.batch_size = 256
    c.eval.num_samples = 16_000  # ED noise floor ~4x lower than at 4000
    c.eval.batch_size = 4000
    c.eval.teacher_steps = (1, 4, 8, 16, 256)
  if arg in ('tiny', 'tiny_mm', 'tiny_emd'):
    c.model.width = 32
    c.model.num_blocks = 1
    c.teacher.num_train_steps = 40
    c.teacher.batch_size = 64
    c.teacher.warmup_steps = 10
    c.checkpoint.every_steps = 20
    c.log.every_steps = 10
    c.log.num_preview_samples = 200
    # TensorBoard's writer imports TensorFlow: 3 s of every test process.
    c.log.tensorboard = False
    c.eval.num_samples = 256
    c.eval.batch_size = 256
    c.eval.teacher_steps = (1, 4)
    c.distill.num_train_steps = 6
    c.distill.batch_size = 64
    c.distill.warmup_steps = 2
    c.distill.sampling_steps = (2,)
    c.emd.sweep = ('langevin_steps=2,parameterization=x,gamma_eps=0.5,'
                   'gamma_z=0.1',)
  elif arg not in (None, '', 'mm', 'emd', 'emd_ablation', 'leaderboard',
                   'imbalanced'):
    raise ValueError(f'unknown toy2d config variant {arg!r} (mm, emd, '
                     'emd_ablation, leaderboard, imbalanced, tiny, tiny_mm, '
                     'tiny_emd)')
  return c


def leaderboard(c):
  """Every few-step method on one teacher and one budget of training
  examples (distill.num_train_steps x distill.batch_size per student;
  progressive distillation splits it over its rounds), scored over 3
  evaluation seeds; the teacher's ancestral and DDIM samplers for
  reference. Every student is trained 3 times (train_seeds): rows give
  the mean and the std over training seeds, and report.md the paired
  differences. Shared by digits.py."""
  c.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'progressive',
              'consistency', 'diff_instruct', 'emd', 'evaluate')
  c.distill.sampling_steps = (1, 2, 4, 8)
  c.train_seeds = 3
  c.eval.num_seeds = 3
  c.eval.samplers = ('ancestral', 'ddim')
  c.eval.teacher_steps = (1, 2, 4, 8, 16, 256)
