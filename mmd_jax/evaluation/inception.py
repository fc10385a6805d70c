"""Inception-v3 as the standard FID implementations use it, in Flax.

This is the 2015-12-05 TensorFlow graph as pytorch-fid ports it (its
`fid_inception_v3`): torchvision's Inception-v3 layout with 1008 classes, the
FID patches (average pools that exclude padding, a max pool in the last
block), bilinear resizing to 299x299 without antialiasing, and inputs scaled
from [0, 1] to [-1, 1]. It returns the 2048-d pool features (FID, precision/
recall) and the 1008-way logits (Inception Score).

Weights load from a local .npz written by
`python -m mmd_jax.evaluation.convert_inception IN.pth OUT.npz`; nothing is
downloaded. Parameter names follow the PyTorch state dict, so the converter
is a transpose and a rename.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmd_jax.workdir import fs

BN_EPS = 1e-3


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
  """Conv (no bias) + inference batch norm + ReLU. Params mirror
  `<name>.conv.weight` and `<name>.bn.{weight,bias,running_mean,running_var}`."""
  features: int
  kernel: tuple | int
  stride: int = 1
  padding: tuple | int = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel)
    ph, pw = _pair(self.padding)
    cin = x.shape[-1]
    w = self.param('kernel', nn.initializers.lecun_normal(),
                   (kh, kw, cin, self.features))
    scale = self.param('bn_scale', nn.initializers.ones, (self.features,))
    bias = self.param('bn_bias', nn.initializers.zeros, (self.features,))
    mean = self.param('bn_mean', nn.initializers.zeros, (self.features,))
    var = self.param('bn_var', nn.initializers.ones, (self.features,))
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (self.stride, self.stride),
        ((ph, ph), (pw, pw)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)
    y = (y - mean) * (scale / jnp.sqrt(var + BN_EPS)) + bias
    return nn.relu(y)


def _avg_pool_same(x):
  # TensorFlow's average pool ignores the zero padding (count_include_pad=False).
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x, stride=2, padding='VALID'):
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name='branch1x1')(x)
    b5 = BasicConv(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, 1, name='branch1x1')(x)
    b7 = BasicConv(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  max_pool_branch: bool  # the FID graph's last block max-pools (Mixed_7c)

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name='branch1x1')(x)
    b3 = BasicConv(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = BasicConv(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], -1)
    pooled = (_max_pool(x, 1, ((1, 1), (1, 1))) if self.max_pool_branch
              else _avg_pool_same(x))
    bp = BasicConv(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_input(x):
  """To 299x299: bilinear with half-pixel centres and no antialiasing, as
  F.interpolate(mode='bilinear', align_corners=False)."""
  return jax.image.resize(x.astype(jnp.float32),
                          (x.shape[0], 299, 299, x.shape[-1]), 'bilinear',
                          antialias=False)


class InceptionV3(nn.Module):
  """images (B, H, W, 3) in [0, 1] -> (pool features (B, 2048), logits (B, 1008))."""
  num_classes: int = 1008
  resize: bool = True

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    if self.resize:
      x = resize_input(x)
    x = 2.0 * x - 1.0
    x = BasicConv(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)
    x = BasicConv(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(False, name='Mixed_7b')(x)
    x = InceptionE(True, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name='fc',
                      precision=jax.lax.Precision.HIGHEST)(pool)
    return pool, logits


# ----------------------------------------------------------------------------
# Weights: PyTorch state-dict names <-> Flax params.

_BN = {'bn.weight': 'bn_scale', 'bn.bias': 'bn_bias',
       'bn.running_mean': 'bn_mean', 'bn.running_var': 'bn_var'}


def torch_to_flax_arrays(state: dict) -> dict:
  """{torch name: array} -> {'/'-joined flax path: array}, transposing conv
  (OIHW -> HWIO) and dense (out, in -> in, out) weights."""
  out = {}
  for name, value in state.items():
    value = np.asarray(value)
    if name.endswith('num_batches_tracked'):
      continue
    if name.startswith('AuxLogits.'):
      continue  # not part of the FID graph
    if name.endswith('.conv.weight'):
      out[name[:-len('.conv.weight')].replace('.', '/') + '/kernel'] = \
          value.transpose(2, 3, 1, 0)
      continue
    for suffix, flax_name in _BN.items():
      if name.endswith('.' + suffix):
        out[name[:-len(suffix) - 1].replace('.', '/') + '/' + flax_name] = value
        break
    else:
      if name == 'fc.weight':
        out['fc/kernel'] = value.T
      elif name == 'fc.bias':
        out['fc/bias'] = value
      else:
        raise ValueError(f'unexpected Inception weight {name!r}')
  return out


def load_params(path: str) -> dict:
  """Flax params from the converter's .npz, checked against the network's
  own shapes so a wrong or truncated file fails here, by name."""
  if not path or not fs.isfile(path):
    raise FileNotFoundError(
        f'Inception weights {path!r} not found; set config.eval.'
        'inception_weights to the .npz written by `python -m '
        'mmd_jax.evaluation.convert_inception pt_inception-2015-12-05-'
        '6726825d.pth OUT.npz` (see docs/evaluation_and_sampling.md)')
  flat = fs.load_npz(path)
  abstract = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 75, 75, 3)))['params']
  expected = {'/'.join(k.key for k in p): v
              for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if missing or extra:
    raise ValueError(f'{path}: not an mmd_jax Inception file (missing '
                     f'{missing[:3]}, unexpected {extra[:3]})')
  params = {}
  for key, value in flat.items():
    if value.shape != expected[key].shape:
      raise ValueError(f'{path}: {key} has shape {value.shape}, expected '
                       f'{expected[key].shape}')
    node = params
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value, jnp.float32)
  return {'params': params}


def save_params(path: str, params) -> None:
  """The converter's .npz format from Flax params: '/'-joined paths. Used
  for randomly initialised networks in tests and smoke runs."""
  params = params.get('params', params)
  flat = {'/'.join(k.key for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  fs.save_npz(path, **flat)


def random_params(seed: int = 0) -> dict:
  """Randomly initialised Inception params (tests and smoke runs only: their
  FIDs mean nothing), drawn as the module's initialisers would be
  (lecun-normal kernels, identity batch norm) but from the parameter shapes
  alone: running the init of ninety convolutions takes half a minute on a
  CPU, this takes a second."""
  shapes = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = getattr(path[-1], 'key', path[-1])
    if name == 'kernel':
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(s.dtype)
    if name in ('bn_scale', 'bn_var'):
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)
