"""Model registry. Teacher, students and auxiliary nets are parameter sets of
one module built here from `config.model`."""
from __future__ import annotations

from mmd_jax.models.mlp import ResMLP
from mmd_jax.models.unet import UNet
from mmd_jax.models.uvit import UViT

MODELS = ('mlp', 'unet', 'uvit')
DTYPES = ('auto', 'float32', 'bfloat16')


def compute_dtype(name: str):
  """'auto': bfloat16 where the backend computes it natively (GPU, TPU),
  float32 on CPU, where bfloat16 is emulated and slower."""
  import jax
  import jax.numpy as jnp
  if name == 'auto':
    name = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


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
  if model_cfg.name == 'uvit':
    return UViT(channels=tuple(model_cfg.channels * m
                               for m in model_cfg.channel_mult),
                num_res_blocks=(model_cfg.num_res_blocks,) * len(
                    model_cfg.channel_mult),
                patch_size=model_cfg.patch_size,
                transformer_width=model_cfg.transformer_width,
                transformer_depth=model_cfg.transformer_depth,
                num_heads=model_cfg.num_heads, mlp_ratio=model_cfg.mlp_ratio,
                dropout=model_cfg.dropout, num_classes=num_classes,
                dtype=compute_dtype(model_cfg.dtype), remat=model_cfg.remat)
  raise ValueError(f'unknown model {model_cfg.name!r}')
