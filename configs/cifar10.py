"""CIFAR-10 (tfds `cifar10`), unconditional.

Neither paper reports CIFAR-10, so the model and its size are [ours]: a UViT
with conv levels at 32 and 16 (128, 256 channels) and 12 transformer blocks
of width 512 on the 8x8 grid, with dropout 0.1 against overfitting 50k
images. The distillation settings follow the ImageNet configs [paper]; see
configs/image_paper.py. The shift is 2 log(64/32): CIFAR's 32x32 images are
less noisy at the same log-SNR than 64x64 ones.
"""
from configs import image_paper

MODEL = dict(channels=128, channel_mult=(1, 2), num_res_blocks=2,
             patch_size=1, transformer_width=512, transformer_depth=12,
             num_heads=8, mlp_ratio=4, dropout=0.1)


def get_config(arg=None):
  return image_paper.get_image_config('cifar10', arg, MODEL, 32, False)
