"""8x8 digits (scikit-learn), class-conditional, in [-1, 1].

The teacher is a class-conditional residual MLP on the 64 flattened pixels:
on 2 CPU cores it trains ~10x faster than a conv UNet of similar size
(docs/ALGORITHMS.md §6), and its samples are as recognisable. The UNet is one
override away: --config.model.name=unet.

Variants: (none) teacher then evaluate; mm adds moment-matching students
(alternating and parameter-space) at k in {1, 2, 4, 8}; emd adds one-step
generators (Diff-Instruct and EMD); vae trains a VAE alone and reports its
ELBO and IWAE log-likelihood on the test split; diffusers distils a teacher
trained elsewhere (give --config.teacher.checkpoint=DIR/unet, e.g. from
tools/diffusers_digits.py) into an 8-step mm_alternating student and an EMD
generator; tiny, tiny_mm, tiny_emd and tiny_vae are seconds-long versions
for tests; leaderboard compares every few-step method on one teacher and
one budget (configs/toy2d.py's leaderboard).
"""
from configs import default
from configs import toy2d


def get_config(arg=None):
  c = default.get_base_config()
  c.data.name = 'digits'
  c.model.name = 'mlp'
  c.model.width = 512
  c.model.num_blocks = 4
  c.model.block_conditioning = False  # 2.2M params, ~24 ms/step (batch 256)
  c.model.conditional = True
  c.teacher.num_train_steps = 15_000
  c.teacher.batch_size = 256
  c.teacher.learning_rate = 1e-3
  c.teacher.label_dropout = 0.1
  c.eval.num_samples = 2000
  c.eval.batch_size = 1000
  c.log.num_preview_samples = 100
  c.distill.num_train_steps = 2000
  c.distill.batch_size = 256
  c.distill.learning_rate = 1e-4
  c.distill.warmup_steps = 200
  c.distill.sampling_steps = (1, 2, 4, 8)
  if arg in ('mm', 'tiny_mm'):
    c.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'evaluate')
  if arg in ('emd', 'tiny_emd'):
    c.stages = ('teacher', 'diff_instruct', 'emd', 'evaluate')
    c.eval.teacher_steps = (1, 2, 4, 8, 256)
  if arg == 'diffusers':
    # A conv UNet costs ~10x the MLP per step on CPU: half the batch, and
    # EMD with K = 4 (K = 16 took >10 s/step here). [ours]
    c.stages = ('teacher', 'mm_alternating', 'emd', 'evaluate')
    c.distill.sampling_steps = (8,)
    c.distill.batch_size = 128
    c.emd.langevin_steps = 4
    c.eval.teacher_steps = (1, 8, 256)
  if arg == 'leaderboard':
    toy2d.leaderboard(c)
  if arg in ('vae', 'tiny_vae'):
    # AEVB alone: W/vae, then ELBO and IWAE rows on the test split.
    # Latent size: --config.vae.latent_dim=2 (manifold picture) or 10.
    c.stages = ('vae', 'evaluate')
  if arg == 'tiny_vae':
    shrink(c)
    shrink_vae(c)
    c.vae.latent_dim = 2
  if arg in ('tiny', 'tiny_mm', 'tiny_emd'):
    shrink(c)
  if arg not in (None, '', 'mm', 'emd', 'vae', 'diffusers', 'leaderboard',
                 'tiny', 'tiny_mm', 'tiny_emd', 'tiny_vae'):
    raise ValueError(f'unknown digits config variant {arg!r} (mm, emd, vae, '
                     'diffusers, leaderboard, tiny, tiny_mm, tiny_emd, '
                     'tiny_vae)')
  return c


def shrink(c):
  """Seconds-long settings for tests (the tiny variants, here and in
  digits_latent.py)."""
  c.model.width = 32
  c.model.num_blocks = 1
  c.teacher.num_train_steps = 20
  c.teacher.batch_size = 32
  c.teacher.warmup_steps = 5
  c.checkpoint.every_steps = 10
  c.log.every_steps = 10
  c.eval.num_samples = 100
  c.eval.batch_size = 100
  c.eval.teacher_steps = (2,)
  c.eval.classifier_steps = 30
  c.distill.num_train_steps = 4
  c.distill.batch_size = 32
  c.distill.warmup_steps = 2
  c.distill.sampling_steps = (2,)


def shrink_vae(c):
  c.vae.hidden = 32
  c.vae.num_train_steps = 20
  c.vae.batch_size = 20
  c.vae.iwae_samples = 50
