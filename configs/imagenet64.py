"""ImageNet 64x64 (tfds `imagenet_resized/64x64`), class-conditional.

The paper's results at this resolution: MM 8-step FID 1.24, EMD one-step
FID 2.20. The teacher is a small UViT ([paper] about 400M parameters; the
exact widths are [ours]): conv levels at 64 and 32 (256, 512 channels),
then 20 transformer blocks of width 1024 on the 16x16 grid. Which other
settings come from the paper: configs/image_paper.py.
"""
from configs import image_paper

MODEL = dict(channels=256, channel_mult=(1, 2), num_res_blocks=2,
             patch_size=1, transformer_width=1024, transformer_depth=20,
             num_heads=16, mlp_ratio=4, dropout=0.0)


def get_config(arg=None):
  return image_paper.get_image_config('imagenet64', arg, MODEL, 64, True)
