import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmd_jax.models import build_model, layers
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
  lam = jnp.array([0.0, 0.0])
  # Jitted: eager dispatch compiles each of the UNet's many small ops.
  params = jax.jit(model.init)({'params': jax.random.PRNGKey(0)}, x, lam,
                               labels)
  apply = jax.jit(model.apply, static_argnames=('train',))
  params = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), params)
  det1 = apply(params, x, lam, labels, train=False)
  assert det1.shape == x.shape
  det2 = apply(params, x, lam, labels, train=False)
  np.testing.assert_array_equal(det1, det2)
  drop = apply(params, x, lam, labels, train=True,
               rngs={'dropout': jax.random.PRNGKey(9)})
  assert not np.allclose(drop, det1)
  other_t = apply(params, x, jnp.array([3.0, 3.0]), labels)
  assert not np.allclose(other_t, det1)
  other_y = apply(params, x, lam, jnp.array([0, 4]))
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
  kw = dict(channels=(8,), num_res_blocks=(1,), patch_size=2,
            transformer_width=32, transformer_depth=1, num_heads=4,
            num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  lam = jnp.array([-2.0, 3.0])
  labels = jnp.array([1, 4])
  plain, remat = UViT(**kw), UViT(**kw, remat=True)
  # Jitted: eager dispatch of a UViT's hundreds of small ops took ~100 s.
  params = _perturbed(jax.jit(plain.init)(jax.random.PRNGKey(1), x, lam,
                                          labels))
  apply = jax.jit(plain.apply)
  out = apply(params, x, lam, labels)
  assert out.shape == x.shape and out.dtype == jnp.float32
  # Noise level and label both reach the output.
  assert not np.allclose(out, apply(params, x, lam + 1.0, labels))
  assert not np.allclose(out, apply(params, x, lam, labels[::-1]))
  # Rematerialisation recomputes, it does not change values or gradients.
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x, lam, labels) ** 2)
  np.testing.assert_allclose(jax.jit(remat.apply)(params, x, lam, labels),
                             out, rtol=1e-5, atol=1e-6)
  g1 = jax.jit(jax.grad(loss(plain)))(params)
  g2 = jax.jit(jax.grad(loss(remat)))(params)
  # Compiled, the two programs fuse (and so round) differently: float32
  # round-off relative to the gradient's scale, not a changed value.
  scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
  # bfloat16 compute keeps float32 params and output.
  bf = UViT(**kw, dtype=jnp.bfloat16)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(
      jax.eval_shape(bf.init, jax.random.PRNGKey(1), x, lam, labels)))
  out_bf = jax.jit(bf.apply)(params, x, lam, labels)
  assert out_bf.dtype == jnp.float32
  np.testing.assert_allclose(out_bf, out, atol=0.1 * float(jnp.max(jnp.abs(out))))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_our_groupnorm_matches_flax_with_the_same_parameters(dtype):
  key = jax.random.PRNGKey(3)
  # Offset and scale the input so a cancelling variance formula would show.
  x = (jax.random.normal(key, (3, 4, 4, 64)) * 3 + 2).astype(dtype)
  ours, theirs = layers.GroupNorm(16, dtype=dtype), nn.GroupNorm(16, dtype=dtype)
  p = theirs.init(key, x)
  assert (jax.tree.map(jnp.shape, ours.init(key, x))
          == jax.tree.map(jnp.shape, p))
  p = jax.tree.map(lambda t: t + jax.random.normal(key, t.shape), p)
  y, ref = ours.apply(p, x), theirs.apply(p, x)
  assert y.dtype == ref.dtype
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(ref, np.float32), atol=tol, rtol=tol)
  # Gradients too: the backward pass is the point of the rewrite.
  g = [jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32))),
                argnums=(0, 1))(p, x.astype(jnp.float32))
       for m in (layers.GroupNorm(16), nn.GroupNorm(16))]
  chex.assert_trees_all_close(g[0], g[1], atol=1e-4, rtol=1e-4)


def test_attention_fn_matches_flax_attention():
  key = jax.random.PRNGKey(4)
  y = jax.random.normal(key, (2, 16, 24))
  ref = nn.MultiHeadDotProductAttention(num_heads=3)
  ours = nn.MultiHeadDotProductAttention(num_heads=3,
                                         attention_fn=layers.attention_fn)
  p = ref.init(key, y, y)
  np.testing.assert_allclose(ours.apply(p, y, y), ref.apply(p, y, y),
                             atol=1e-5, rtol=1e-5)
  mask = jax.random.bernoulli(key, 0.7, (2, 1, 16, 16)).at[..., 0].set(True)
  np.testing.assert_allclose(ours.apply(p, y, y, mask=mask),
                             ref.apply(p, y, y, mask=mask), atol=1e-5, rtol=1e-5)


def test_noise_level_embedding_is_float32_at_full_precision():
  """Whatever the model's dtype and the matmul precision in force."""
  from mmd_jax.models.embeddings import Conditioning
  from mmd_jax.models.uvit import UViT
  lam, labels = jnp.array([-2.0, 3.0]), jnp.array([0, 1])
  m = Conditioning(16, 3)
  params = m.init(jax.random.PRNGKey(0), lam, labels)
  with jax.default_matmul_precision('bfloat16'):
    jaxpr = jax.make_jaxpr(lambda p: m.apply(p, lam, labels))(params)
  dots = [e for e in jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 2
  assert all('HIGHEST' in str(e.params['precision']) for e in dots)
  assert jaxpr.out_avals[0].dtype == jnp.float32
  # In a bfloat16 UViT the embedding is still computed in float32.
  net = UViT(channels=(8,), num_res_blocks=(1,), patch_size=2,
             transformer_width=16, transformer_depth=1, num_heads=2,
             num_classes=3, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 8, 8, 3))
  p = net.init(jax.random.PRNGKey(1), x, lam, labels)
  _, inter = net.apply(p, x, lam, labels, capture_intermediates=True)
  emb = inter['intermediates']['Conditioning_0']['__call__'][0]
  assert emb.dtype == jnp.float32
