"""Model registry. Teacher, students and auxiliary nets are parameter sets of
one module built here from `config.model`."""
from __future__ import annotations

from mmd_jax.models.mlp import ResMLP
from mmd_jax.models.unet import UNet

MODELS = ('mlp', 'unet')


def build_model(model_cfg, num_classes: int):
  if model_cfg.name == 'mlp':
    return ResMLP(width=model_cfg.width, num_blocks=model_cfg.num_blocks,
                  num_classes=num_classes, dropout=model_cfg.dropout,
                  block_conditioning=model_cfg.block_conditioning)
  if model_cfg.name == 'unet':
    return UNet(channels=model_cfg.channels,
                channel_mult=tuple(model_cfg.channel_mult),
                num_res_blocks=model_cfg.num_res_blocks,
                attn_resolutions=tuple(model_cfg.attn_resolutions),
                num_heads=model_cfg.num_heads, dropout=model_cfg.dropout,
                num_classes=num_classes)
  raise ValueError(f'unknown model {model_cfg.name!r}')
