"""Stable Diffusion v1.5 on paper: what distilling it would cost, from its
shapes alone (no weights: `--mode=describe` only).

  python -m mmd_jax.main --config=configs/sd15.py --workdir=/tmp/sd15 \
      --mode=describe --config.describe.target=tpu_v5e_256,h100x8

configs/sd15/ is a weightless diffusers pipeline directory: SD v1.5's
published unet/config.json (859,520,964 parameters), vae/config.json
(83,653,863) and scheduler/scheduler_config.json; shapes.npz is a
prompts-only captions file holding one zero caption of CLIP ViT-L's
77 x 768 tokens, and data.example_shape is SD's 64x64x4 latent (512 px).
Both stand for shapes only: training with them is refused (no weights, no
examples). The teacher is the imported UNet;
the stages are the teacher-only forward (the teacher's import), both
moment-matching algorithms at k = 8 and EMD.

Batch sizes are the papers' ImageNet ones (2048, configs/image_paper.py)
[paper, ImageNet]: neither paper's SD batch is used here. Everything else
is this project's default. To train for real, point teacher.checkpoint at
a downloaded pipeline and data.path at your captions file
(docs/import.md#stable-diffusion-class-teachers).

Variants: (none) the pod-scale description; tiny: batch 8, for tests.
"""
import os

from configs import default

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sd15')


def get_config(arg=None):
  c = default.get_base_config()
  c.data.name = 'points'
  c.data.path = os.path.join(HERE, 'shapes.npz')
  c.data.example_shape = (64, 64, 4)
  c.model.conditional = True
  c.teacher.checkpoint = HERE
  c.teacher.label_dropout = 0.0    # imported, not trained here
  c.teacher.frozen_dtype = 'bfloat16'
  c.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'emd',
              'evaluate')
  c.distill.sampling_steps = (8,)
  c.distill.batch_size = 2048      # [paper, ImageNet]
  c.eval.teacher_steps = (8, 256)
  if arg == 'tiny':
    c.distill.batch_size = 8
    c.stages = ('teacher', 'mm_alternating', 'evaluate')
  elif arg not in (None, ''):
    raise ValueError(f'unknown sd15 config variant {arg!r} (tiny)')
  return c
