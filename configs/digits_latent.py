"""Latent diffusion on the 8x8 digits: a VAE, then the teacher and students
in its 10-D latent space, scored on decoded samples (space.py).

  vae -> teacher -> mm_alternating -> emd -> evaluate

The diffusion stages see (N, 10) points: the encoder means, scaled so their
standard deviation is teacher.sigma_data. A residual MLP the size of the
toy2d teacher is enough there. Evaluation decodes every sample with the
VAE's decoder mean and scores it with the digits classifier, as on pixels.
Use another VAE with --config.latent.vae_checkpoint=W/vae.

Variants: (none) the full run; tiny: seconds, for tests.
"""
from configs import digits


def get_config(arg=None):
  c = digits.get_config()
  c.stages = ('vae', 'teacher', 'mm_alternating', 'emd', 'evaluate')
  c.vae.latent_dim = 10
  c.model.width = 256            # [ours] the toy2d teacher's size
  c.model.num_blocks = 3
  c.model.block_conditioning = True
  c.teacher.num_train_steps = 10_000
  c.distill.num_train_steps = 2000
  c.distill.sampling_steps = (1, 2, 4, 8)
  c.eval.teacher_steps = (1, 2, 4, 8, 256)
  if arg == 'tiny':
    digits.shrink(c)
    digits.shrink_vae(c)
    c.vae.latent_dim = 4
    c.emd.langevin_steps = 2
  elif arg not in (None, ''):
    raise ValueError(f'unknown digits_latent variant {arg!r} (tiny)')
  return c
