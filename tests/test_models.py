import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmd_jax.models import build_model
from mmd_jax.models.mlp import ResMLP
from mmd_jax.models.unet import UNet


def _init_apply(model, x, labels=None, train=False):
  lam = jnp.linspace(-5, 5, x.shape[0])
  params = model.init({'params': jax.random.PRNGKey(0),
                       'dropout': jax.random.PRNGKey(1)}, x, lam, labels)
  out = model.apply(params, x, lam, labels, train=train,
                    rngs={'dropout': jax.random.PRNGKey(2)})
  return params, out


def test_mlp_shapes_and_zero_init_output():
  x = jnp.ones((4, 2))
  params, out = _init_apply(ResMLP(width=32, num_blocks=2), x)
  assert out.shape == x.shape
  # Zero-initialised head: a fresh v-model predicts v = 0, i.e. x_hat = a z.
  np.testing.assert_allclose(out, 0.0)


def test_mlp_flattens_images_and_uses_labels():
  model = ResMLP(width=32, num_blocks=1, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  params, _ = _init_apply(model, x, jnp.array([0, 1, 2]))
  # Perturb the zero-initialised head so outputs depend on the inputs.
  params = jax.tree.map(lambda p: p + 0.05, params)
  lam = jnp.zeros(3)
  a = model.apply(params, x, lam, jnp.array([0, 1, 2]))
  b = model.apply(params, x, lam, jnp.array([5, 1, 2]))
  assert a.shape == x.shape
  assert not np.allclose(a[0], b[0]) and np.allclose(a[1:], b[1:])


@pytest.mark.parametrize('attn', [(), (4,)])
def test_unet_shapes_conditioning_and_dropout(attn):
  model = UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=attn, dropout=0.5, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  labels = jnp.array([3, 4])
  params, out = _init_apply(model, x, labels)
  assert out.shape == x.shape
  params = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), params)
  lam = jnp.array([0.0, 0.0])
  det1 = model.apply(params, x, lam, labels, train=False)
  det2 = model.apply(params, x, lam, labels, train=False)
  np.testing.assert_array_equal(det1, det2)
  drop = model.apply(params, x, lam, labels, train=True,
                     rngs={'dropout': jax.random.PRNGKey(9)})
  assert not np.allclose(drop, det1)
  other_t = model.apply(params, x, jnp.array([3.0, 3.0]), labels)
  assert not np.allclose(other_t, det1)
  other_y = model.apply(params, x, lam, jnp.array([0, 4]))
  assert not np.allclose(other_y[0], det1[0])
  np.testing.assert_allclose(other_y[1], det1[1], rtol=1e-5, atol=1e-6)


def test_build_model_from_config():
  cfg = ml_collections.ConfigDict(dict(
      name='unet', channels=8, channel_mult=[1, 2], num_res_blocks=1,
      attn_resolutions=[4], num_heads=2, dropout=0.0, width=8, num_blocks=1,
      block_conditioning=False))
  assert isinstance(build_model(cfg, 10), UNet)
  cfg.name = 'mlp'
  assert isinstance(build_model(cfg, 0), ResMLP)
  cfg.name = 'nope'
  with pytest.raises(ValueError, match='unknown model'):
    build_model(cfg, 0)


def _perturbed(params, scale=0.05):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  return jax.tree.unflatten(tree, [
      l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_uvit_patches_conditions_and_remat_changes_nothing():
  from mmd_jax.models.uvit import UViT
  kw = dict(channels=(8, 16), num_res_blocks=(1, 1), patch_size=2,
            transformer_width=32, transformer_depth=2, num_heads=4,
            num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  lam = jnp.array([-2.0, 3.0])
  labels = jnp.array([1, 4])
  plain, remat = UViT(**kw), UViT(**kw, remat=True)
  params = _perturbed(plain.init(jax.random.PRNGKey(1), x, lam, labels))
  out = plain.apply(params, x, lam, labels)
  assert out.shape == x.shape and out.dtype == jnp.float32
  # Noise level and label both reach the output.
  assert not np.allclose(out, plain.apply(params, x, lam + 1.0, labels))
  assert not np.allclose(out, plain.apply(params, x, lam, labels[::-1]))
  # Rematerialisation recomputes, it does not change values or gradients.
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x, lam, labels) ** 2)
  np.testing.assert_allclose(remat.apply(params, x, lam, labels), out,
                             rtol=1e-5, atol=1e-6)
  g1, g2 = jax.grad(loss(plain))(params), jax.grad(loss(remat))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # bfloat16 compute keeps float32 params and output.
  bf = UViT(**kw, dtype=jnp.bfloat16)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(
      bf.init(jax.random.PRNGKey(1), x, lam, labels)))
  out_bf = bf.apply(params, x, lam, labels)
  assert out_bf.dtype == jnp.float32
  np.testing.assert_allclose(out_bf, out, atol=0.1 * float(jnp.max(jnp.abs(out))))
