"""Captioned digits (data/digits_text.py): each 8x8 digit captioned by its
class and, in the extreme tertiles, its ink mass and slant ("bold three
leaning right"), embedded by the deterministic encoder.

The teacher is the conv UNet with cross-attention to the caption tokens,
trained with 10% caption dropout to the empty caption. Then an 8-step
mm_alternating student. Metrics: per-attribute and joint caption accuracy
(the class read by the project's digits classifier, ink and slant exact
functions of the pixels, thresholds the training images' tertiles) and
`fd`; 3 evaluation seeds. About an hour on one core (57 minutes).

Variants: (none) the benchmark; tiny: a seconds-long run for tests;
diffusers: a latent pipeline trained elsewhere (tools/diffusers_digits_text.py;
give --config.teacher.checkpoint=PIPE --config.latent.vae_checkpoint=PIPE)
distilled into an 8-step mm_alternating student and a one-step
Diff-Instruct generator, scored on the decoded images.
"""
from configs import digits


def get_config(arg=None):
  if arg not in (None, '', 'tiny', 'diffusers'):
    raise ValueError(f'unknown digits_text config variant {arg!r} (tiny, '
                     'diffusers)')
  c = digits.get_config('tiny' if arg == 'tiny' else None)
  c.data.name = 'digits_text'
  c.model.name = 'unet'
  # Conv nets are compute-bound on CPU (69% of one core's matmul peak at
  # 32 channels): 16 channels and a batch of 128 cost 112 ms per teacher
  # step and 218 ms per mm_alternating step (256: ~440) on one core, so
  # the benchmark ran in 57 minutes; 32 channels cost 2.7x. [ours]
  c.model.channels = 16
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.conditional = True
  c.teacher.label_dropout = 0.1
  if arg != 'tiny':
    c.teacher.batch_size = 128
    c.teacher.num_train_steps = 12_000
  c.stages = ('teacher', 'mm_alternating', 'evaluate')
  c.distill.sampling_steps = (8,)
  c.eval.num_seeds = 3
  c.eval.teacher_steps = (8, 256)
  if arg == 'diffusers':
    # The teacher's network and its VAE come from the pipeline; the
    # students are copies of the imported UNet. Diff-Instruct at twice
    # the students' updates, the learning rates toy2d_text needed. [ours]
    c.stages = ('teacher', 'mm_alternating', 'diff_instruct', 'evaluate')
    c.distill.batch_size = 128
    c.emd.num_train_steps = 2 * c.distill.num_train_steps
    c.emd.generator_learning_rate = 3e-4
    c.emd.score_learning_rate = 3e-4
  if arg == 'tiny':
    c.model.channels = 8
    c.model.channel_mult = (1,)
    c.distill.num_train_steps = 10
    c.distill.sampling_steps = (2,)
    c.eval.num_seeds = 1
    c.eval.teacher_steps = (2,)
  return c
