"""ImageNet 128x128 (tfds `imagenet2012`, centre-cropped and area-resized),
class-conditional.

The paper's results at this resolution: MM 8-step FID 1.49, EMD one-step
FID 6.0. The teacher is a small UViT ([paper] about 400M parameters; the
layout is [ours]): 2x2 patches first, so the conv levels run at 64 and 32
(256, 512 channels) and 20 transformer blocks of width 1024 on the 16x16
grid, as at 64x64. The log-SNR shift for 128 (-2 log 2) is [paper]. Which
other settings come from the paper: configs/image_paper.py.
"""
from configs import image_paper

MODEL = dict(channels=256, channel_mult=(1, 2), num_res_blocks=2,
             patch_size=2, transformer_width=1024, transformer_depth=20,
             num_heads=16, mlp_ratio=4, dropout=0.0)


def get_config(arg=None):
  return image_paper.get_image_config('imagenet128', arg, MODEL, 128, True)
