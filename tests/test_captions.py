"""Caption conditioning: the condition pytree, guidance against the null
caption, caption dropout, masks, and the conditioned data file."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from mmd_jax.blocks.microbatch import ALL
from mmd_jax.data import DataError, captions, text_encoder, toy2d_text
from mmd_jax.models.mlp import ResMLP
from mmd_jax.models.unet import UNet
from mmd_jax.models.uvit import UViT
from mmd_jax.numerics import diffusion
from mmd_jax.numerics.condition import Captions
from mmd_jax.numerics.denoiser import DenoiserSpec

L, D = 5, 6


def _spec(module=None, null=True):
  rng = np.random.default_rng(0)
  nul = {'emb': rng.standard_normal((L, D)).astype(np.float32),
         'mask': np.ones(L, np.float32)} if null else None
  return DenoiserSpec(module or ResMLP(width=32, num_blocks=1),
                      diffusion.Schedule(), captions=Captions(L, D,
                                                                     null=nul))


def _cond(b, seed=1):
  rng = np.random.default_rng(seed)
  mask = (rng.random((b, L)) < 0.7).astype(np.float32)
  mask[:, 0] = 1.0
  return {'emb': jnp.asarray(rng.standard_normal((b, L, D)), jnp.float32),
          'mask': jnp.asarray(mask)}


def _params(spec, x):
  p = spec.init_params(jax.random.PRNGKey(0), x)
  # Non-zero output layers, so the condition reaches the output.
  return jax.tree.map(lambda l: l + 0.1 * jax.random.normal(
      jax.random.PRNGKey(l.size), l.shape), p)


def test_guidance_with_a_batched_null_half_equals_two_separate_calls():
  spec = _spec()
  x = jax.random.normal(jax.random.PRNGKey(2), (6, 2))
  params, cond = _params(spec, x), _cond(6)
  lam = jnp.linspace(-4.0, 4.0, 6)
  w = 1.5
  guided = spec.denoiser(params, cond, guidance=w)(x, lam)
  c = spec.x_hat(params, x, lam, cond)
  u = spec.x_hat(params, x, lam, spec.null_cond(cond))
  np.testing.assert_allclose(guided, (1 + w) * c - w * u, rtol=1e-5,
                             atol=1e-6)
  assert float(jnp.max(jnp.abs(c - u))) > 1e-3   # the caption matters
  # w = 0 is the conditional output.
  np.testing.assert_array_equal(spec.denoiser(params, cond, 0.0)(x, lam), c)
  # A negative caption takes the null's place.
  neg = _cond(6, seed=9)
  np.testing.assert_allclose(
      spec.denoiser(params, cond, w, null=neg)(x, lam),
      (1 + w) * c - w * spec.x_hat(params, x, lam, neg), rtol=1e-5,
      atol=1e-6)


def test_guidance_without_a_null_caption_is_refused_in_one_line():
  spec = _spec(null=False)
  x = jnp.zeros((2, 2))
  params = spec.init_params(jax.random.PRNGKey(0), x)
  with pytest.raises(Exception, match='null_emb') as e:
    spec.denoiser(params, _cond(2), guidance=1.0)
  assert '\n' not in str(e.value)


def test_caption_dropout_hits_its_rate_and_drops_whole_rows():
  spec = _spec()
  cond = _cond(20_000)
  out = spec.drop_cond(jax.random.PRNGKey(3), cond, 0.1, ALL)
  null = spec.null_cond(cond)
  is_null = np.all(np.asarray(out['emb'] == null['emb']), axis=(1, 2))
  kept = np.all(np.asarray(out['emb'] == cond['emb']), axis=(1, 2))
  assert np.all(is_null | kept)
  # Mask follows the emb row it came with.
  np.testing.assert_array_equal(np.asarray(out['mask'])[is_null],
                                np.asarray(null['mask'])[is_null])
  rate = is_null.mean()
  assert abs(rate - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000), rate
  assert spec.drop_cond(jax.random.PRNGKey(3), cond, 0.0, ALL) is cond


@pytest.mark.parametrize('module,shape', [
    (ResMLP(width=32, num_blocks=1), (3, 2)),
    (UNet(channels=8, channel_mult=(1,), num_res_blocks=1,
          attn_resolutions=(4,)), (3, 4, 4, 1)),
    (UViT(channels=(8,), num_res_blocks=(1,), transformer_width=16,
          transformer_depth=1, num_heads=2), (3, 4, 4, 1))],
    ids=['mlp', 'unet', 'uvit'])
def test_a_fully_masked_caption_gives_finite_outputs_and_the_mask_counts(
    module, shape):
  spec = _spec(module)
  x = jax.random.normal(jax.random.PRNGKey(2), shape)
  params = jax.jit(lambda x: _params(spec, x))(x)
  cond = _cond(3)
  cond['mask'] = cond['mask'].at[0].set(0.0)
  lam = jnp.zeros((3,))
  # Jitted: eager dispatch compiles each of a UNet's many small ops.
  x_hat = jax.jit(lambda c: spec.x_hat(params, x, lam, c))
  out = x_hat(cond)
  assert np.all(np.isfinite(out))
  # Changing a masked token changes nothing; changing a real one does.
  masked = int(np.argmin(np.asarray(cond['mask'][1])))
  assert cond['mask'][1, masked] == 0
  poked = dict(cond, emb=cond['emb'].at[1, masked].add(5.0))
  np.testing.assert_allclose(x_hat(poked), out, atol=1e-5)
  poked = dict(cond, emb=cond['emb'].at[1, 0].add(5.0))
  assert float(jnp.max(jnp.abs(x_hat(poked)[1] - out[1]))) > 1e-4


def _write(tmp_path, **arrays):
  path = str(tmp_path / 'f.npz')
  np.savez(path, **arrays)
  return path


def _good(n=12, k=3):
  t = text_encoder.encode([f'word{i}' for i in range(k)])
  return dict(x=np.random.default_rng(0).standard_normal((n, 2)),
              caption_id=np.arange(n) % k, **t)


@pytest.mark.parametrize('change,array', [
    (dict(caption_id=np.arange(12) % 3 + 1), 'caption_id'),
    (dict(caption_id=(np.arange(12) % 3).astype(np.float32)), 'caption_id'),
    (dict(x=np.zeros((11, 2))), 'x'),
    (dict(x=np.full((12, 2), np.nan)), 'x'),
    (dict(mask=np.ones((3, 4))), 'mask'),
    (dict(mask=np.full((3, 8), 0.5)), 'mask'),
    (dict(emb=np.ones((3, 8))), 'emb'),
    (dict(emb=np.full((3, 8, 32), np.inf)), 'emb'),
    (dict(emb=np.ones((3, 8, 32), np.complex64)), 'emb'),
    (dict(null_emb=np.ones((8, 31))), 'null_emb'),
    (dict(null_mask=np.ones(7)), 'null_mask'),
    (dict(pooled=np.ones((2, 4))), 'pooled'),
    (dict(captions=np.array(['a', 'b'])), 'captions'),
    (dict(labels=np.arange(12)), 'labels'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_conditioned_files_end_with_one_line_naming_the_array(
    tmp_path, change, array):
  path = _write(tmp_path, **{**_good(), **change})
  with pytest.raises(DataError) as e:
    captions.load_conditioned(path)
  msg = str(e.value)
  assert f"array {array!r}" in msg and '\n' not in msg, msg


def test_a_good_file_loads_and_batches_gather_the_table(tmp_path):
  g = _good()
  x, ids, table = captions.load_conditioned(_write(tmp_path, **g))
  assert table.signature() == Captions(8, 32, 0, table.null)
  src = captions.CaptionSource(x, ids, table)
  b = src.take(np.array([4, 0]))
  np.testing.assert_array_equal(b['cond']['emb'], g['emb'][[1, 0]])
  np.testing.assert_array_equal(b['x'], x[[4, 0]])
  assert table.text(2) == 'word2'


def test_toy2d_text_conditionals_hold_only_the_modes_their_caption_names():
  cm = toy2d_text.ring8_captioned()
  assert cm.allowed.sum(1).tolist() == [4, 4, 4, 4, 2, 2, 2, 2]
  x, ids = cm.sample(np.random.default_rng(0), 4000)
  d = np.linalg.norm(x[:, None] - cm.mixture.means[None], axis=-1)
  assert np.all(cm.allowed[ids, np.argmin(d, 1)])
  assert abs(np.mean(ids == 3) - 1 / 8) < 0.02


def test_a_file_of_my_own_trains_teacher_mm_and_diff_instruct_and_samples_per_caption(
    tmp_path):
  """Captions the benchmark was not designed around: three clusters named
  by colour words, one caption naming two of them."""
  import json
  import tiny
  from mmd_jax import sample
  rng = np.random.default_rng(5)
  centres = np.array([[-3.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
  words = ['red dot', 'green blob', 'blue or red thing']
  ids = rng.integers(0, 3, 600)
  cluster = np.where(ids == 2, rng.choice([0, 2], 600), ids)
  x = centres[cluster] + 0.2 * rng.standard_normal((600, 2))
  path = _write(tmp_path, x=x.astype(np.float32), caption_id=ids,
                **text_encoder.encode(words))
  w = tmp_path / 'w'
  tiny.run('toy2d_text', 'tiny', w, {'data.name': 'points',
                                     'data.path': path})
  rep = json.load(open(w / 'report.json'))
  assert rep['dataset'] == 'points/f.npz'
  for r in rep['rows']:
    assert np.isfinite(r['metrics']['caption_energy_distance'])
    assert 'caption_accuracy' not in r['metrics']   # no known modes
  assert (w / 'captions_diff_instruct_k1.png').exists()
  for stage in ('teacher', 'mm_alternating_k2', 'diff_instruct_k1'):
    s, got, _ = sample.draw(str(w / stage), None if stage != 'teacher'
                            else 4, 6, caption_ids=['2', '0'])
    assert s.shape == (6, 2) and np.all(np.isfinite(s))
    np.testing.assert_array_equal(got['caption_ids'], [2, 0, 2, 0, 2, 0])
  with pytest.raises(sample.SampleError, match='not a row'):
    sample.draw(str(w / 'teacher'), 4, 6, caption_ids=['3'])
  # A negative caption takes the null half's place: against its own
  # caption, guidance cancels; against another, it differs from the null.
  teach = lambda **kw: sample.draw(str(w / 'teacher'), 4, 6,
                                   caption_ids=['2'], **kw)[0]
  plain = teach()
  np.testing.assert_allclose(teach(guidance=2.0, negative_caption_id=2),
                             plain, rtol=1e-4, atol=1e-5)
  assert np.abs(teach(guidance=2.0, negative_caption_id=0)
                - plain).max() > 1e-3
  with pytest.raises(sample.SampleError, match='give --guidance > 0'):
    teach(negative_caption_id=0)
  with pytest.raises(sample.SampleError, match='--negative_caption_id: 7 is '
                     'not a row'):
    teach(guidance=1.0, negative_caption_id=7)
  with pytest.raises(sample.SampleError, match='distilled'):
    sample.draw(str(w / 'mm_alternating_k2'), None, 6, guidance=1.0)


def test_the_exact_conditional_denoiser_matches_binned_samples():
  """E[x | z_t in cell] = E[x_hat(z_t | caption) | z_t in cell] for every
  cell: the analytic teacher given 'upper left' against samples of the
  restricted mixture; the unconditional denoiser fails the same check, and
  the null caption gives the unconditional one."""
  from mmd_jax.numerics import analytic
  cm, t = toy2d_text.ring8_captioned(), toy2d_text.table()
  mix = analytic.AnalyticMixture.of(cm.mixture, cm.allowed, t)
  k = toy2d_text.CAPTIONS.index('upper left')
  rng = np.random.default_rng(0)
  n = 200_000
  x = cm.conditional(k).sample(rng, n)
  lam = jnp.full((n,), -1.0)
  a, s = (np.asarray(v)[:, None] for v in diffusion.alpha_sigma(lam))
  z = (a * x + s * rng.standard_normal(x.shape)).astype(np.float32)
  cond = {'emb': jnp.broadcast_to(t['emb'][k], (n,) + t['emb'].shape[1:]),
          'mask': jnp.broadcast_to(t['mask'][k], (n,) + t['mask'].shape[1:])}
  xh = np.asarray(analytic.x_hat(mix, jnp.asarray(z), lam, cond))
  xu = np.asarray(analytic.x_hat(mix, jnp.asarray(z), lam))
  cell = np.floor(z / 0.3).astype(int)
  _, inv, counts = np.unique(cell, axis=0, return_inverse=True,
                             return_counts=True)
  worst_c, worst_u = 0.0, 0.0
  for c in np.nonzero(counts >= 2000)[0]:
    sel = inv.ravel() == c
    se = np.std(x[sel] - xh[sel], axis=0) / np.sqrt(sel.sum()) + 1e-4
    worst_c = max(worst_c, np.max(np.abs(x[sel].mean(0) - xh[sel].mean(0))
                                  / se))
    worst_u = max(worst_u, np.max(np.abs(x[sel].mean(0) - xu[sel].mean(0))
                                  / se))
  assert worst_c < 5.0, worst_c
  assert worst_u > 20.0, worst_u
  null = {'emb': jnp.broadcast_to(t['null_emb'], cond['emb'].shape),
          'mask': jnp.broadcast_to(t['null_mask'], cond['mask'].shape)}
  np.testing.assert_allclose(
      analytic.x_hat(mix, jnp.asarray(z[:500]), lam[:500],
                     jax.tree.map(lambda v: v[:500], null)), xu[:500],
      rtol=1e-5, atol=1e-6)


def test_digits_captions_name_exact_attributes_and_score_real_images_high():
  from mmd_jax.data import digits as digits_lib, digits_text
  (xtr, ytr), (xte, yte) = digits_lib.load_digits_split()
  cd = digits_text.build(xtr)
  ids = cd.caption_ids(xte, yte)
  named = cd.named[ids]
  assert np.all(named[:, 0] == yte)
  # Tertiles: about a third of the training images in each.
  ink, sl = cd.tertiles(xtr)
  for t in (ink, sl):
    assert np.all(np.abs(np.bincount(t, minlength=3) / len(t) - 1 / 3) < 0.02)
  # Real test images against their own captions: attributes exact, the
  # class as given; against a shifted caption table, wrong.
  acc = cd.accuracy(xte, ids, yte)
  assert acc['caption_ink_accuracy'] == 1.0
  assert acc['caption_slant_accuracy'] == 1.0
  assert acc['caption_joint_accuracy'] == 1.0
  wrong = cd.accuracy(xte, ids, (yte + 1) % 10)
  assert wrong['caption_class_accuracy'] == 0.0
  assert cd.captions[int(np.nonzero((cd.named == [3, 2, 2]).all(1))[0][0])] \
      == 'bold three leaning right'
  # A mirrored digit leans the other way.
  lean = digits_text.slant(xte)
  mirrored = digits_text.slant(xte[:, :, ::-1])
  np.testing.assert_allclose(mirrored, -lean, atol=1e-9)


def test_digits_text_tiny_trains_the_cross_attention_unet_and_reports(
    tmp_path):
  import json
  import tiny
  # The teacher's cross-attention UNet end to end; every method's caption
  # path is the contract test's.
  tiny.run('digits_text', 'tiny', tmp_path,
           {'stages': ('teacher', 'evaluate')})
  rep = json.load(open(tmp_path / 'report.json'))
  # Real test images against their own captions: the pixel attributes
  # exact, so every miss is the (tiny) classifier's.
  ref = rep['reference']
  assert ref['caption_ink_accuracy'] == ref['caption_slant_accuracy'] == 1.0
  assert ref['caption_joint_accuracy'] == ref['caption_class_accuracy']
  for r in rep['rows']:
    m = r['metrics']
    for k in ('fd', 'caption_class_accuracy', 'caption_ink_accuracy',
              'caption_slant_accuracy', 'caption_joint_accuracy'):
      assert np.isfinite(m[k]), (r['model'], k)
  # One row per caption, with its text, linked from the report.
  assert '(captions_teacher_ancestral.png)' in open(
      tmp_path / 'report.md').read()
  assert (tmp_path / 'captions_teacher_ancestral.png').stat().st_size > 5000


def test_caption_dropout_and_guidance_without_a_null_caption_are_refused(
    tmp_path):
  from mmd_jax.run import config_check
  from mmd_jax.run.checks import ConfigError
  import tiny
  g = _good()
  del g['null_emb'], g['null_mask']
  path = _write(tmp_path, **g)
  base = {'data.name': 'points', 'data.path': path}
  with pytest.raises(ConfigError, match='teacher.label_dropout.*null_emb'):
    config_check.validate(tiny.config('toy2d_text', 'tiny', base))
  with pytest.raises(ConfigError, match='distill.guidance.*null_emb'):
    config_check.validate(tiny.config('toy2d_text', 'tiny', dict(
        base, **{'teacher.label_dropout': 0.0, 'distill.guidance': 1.0})))
  config_check.validate(tiny.config('toy2d_text', 'tiny', dict(
      base, **{'teacher.label_dropout': 0.0})))


def test_an_image_shaped_caption_file_trains_a_cross_attention_unet(
    tmp_path):
  """data.name=points with NHWC examples (images or latents): kind
  'arrays', the UNet allowed, samples unquantised and scored by fd_raw."""
  import json
  import tiny
  rng = np.random.default_rng(2)
  ids = np.arange(48) % 2
  x = (rng.standard_normal((48, 8, 8, 2)) * 0.3
       + np.where(ids == 0, -1.0, 1.0)[:, None, None, None])
  path = _write(tmp_path, x=x.astype(np.float32), caption_id=ids,
                **text_encoder.encode(['dark', 'bright']))
  w = tmp_path / 'w'
  tiny.run('digits_text', 'tiny', w, {
      'data.name': 'points', 'data.path': path,
      'stages': ('teacher', 'evaluate'), 'eval.num_samples': 64,
      'eval.batch_size': 64})
  rep = json.load(open(w / 'report.json'))
  assert np.isfinite(rep['rows'][0]['metrics']['fd_raw'])
  assert (w / 'captions_teacher_ancestral.png').exists()


def test_fd_raw_is_zero_between_equal_sets_and_grows_with_a_shift():
  from mmd_jax.evaluation import references
  rng = np.random.default_rng(0)
  a = rng.standard_normal((600, 4, 4, 2))
  b = rng.standard_normal((600, 4, 4, 2))
  assert abs(references.fd_raw(a, a)) < 1e-6
  same = references.fd_raw(a, b)
  # A mean shift of 0.5 in each of the 32 values adds 32 * 0.25 = 8.
  shifted = references.fd_raw(a + 0.5, b)
  assert 7.0 < shifted - same < 9.0, (same, shifted)
  wide = rng.standard_normal((300, 20, 20, 1))   # projected to 256 dims
  assert np.isfinite(references.fd_raw(wide, wide + 1.0))
  assert np.isnan(references.fd_raw(np.full((3, 2, 2, 1), np.nan), a[:3]))


def test_a_prompts_only_file_trains_diff_instruct_and_refuses_the_rest(
    tmp_path):
  """No array x: an imported teacher and a one-step generator train on
  captions and noise alone (points, so previews draw no data); a method
  that reads examples is refused in one line, and so is a file without
  data.example_shape; evaluation reports sample statistics."""
  import json
  import tiny
  from mmd_jax import sample
  from mmd_jax.run.checks import ConfigError
  tiny.run('toy2d_text', 'tiny', tmp_path / 't', {'stages': ('teacher',)})
  table = text_encoder.encode(['left', 'upper right'])
  path = _write(tmp_path, caption_id=np.arange(2), **table)
  over = {'data.name': 'points', 'data.path': path,
          'data.example_shape': (2,),
          'teacher.checkpoint': str(tmp_path / 't' / 'teacher')}
  with pytest.raises(ConfigError, match='holds prompts only.*'
                     'mm_alternating_k2 trains on examples'):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w0', dict(
        over, stages=('teacher', 'mm_alternating')))
  with pytest.raises(DataError, match='give data.example_shape'):
    tiny.run('toy2d_text', 'tiny', tmp_path / 'w1', dict(
        over, stages=('teacher',), **{'data.example_shape': ()}))
  w = tmp_path / 'w'
  tiny.run('toy2d_text', 'tiny', w, dict(
      over, stages=('teacher', 'diff_instruct', 'evaluate')))
  rep = json.load(open(w / 'report.json'))
  assert 'prompts_only' in rep and rep['reference'] == {}
  for r in rep['rows']:
    assert np.isfinite(r['metrics']['sample_std']), r
  s, ids, _ = sample.draw(str(w / 'diff_instruct_k1'), None, 4,
                          caption_ids=['1'])
  assert s.shape == (4, 2) and np.all(np.isfinite(s))


def test_an_exported_split_reads_back_as_the_same_captioned_data(tmp_path):
  """mmd_jax.data.export writes what data.path reads: the same examples,
  caption ids, table and null caption; data without captions is refused."""
  import tiny
  from mmd_jax.data import export, load_dataset
  c = tiny.config('digits_text', 'tiny')
  path = str(tmp_path / 'train.npz')
  n = export.export(c, path)
  ref = load_dataset(c.data)
  back = load_dataset(tiny.config('toy2d_text', 'tiny', {
      'data.name': 'points', 'data.path': path}).data)
  assert n == len(ref.train['x']) and back.kind == 'arrays'
  np.testing.assert_array_equal(back.train['x'], ref.train['x'])
  np.testing.assert_array_equal(back.train['caption_id'],
                                ref.train['caption_id'])
  for key in ('emb', 'mask'):
    np.testing.assert_array_equal(getattr(back.captions, key),
                                  getattr(ref.captions, key))
  for key in ('emb', 'mask'):
    np.testing.assert_array_equal(back.captions.null[key],
                                  ref.captions.null[key])
  assert back.captions.texts == ref.captions.texts
  with pytest.raises(DataError, match="data.name='digits' has no captions"):
    export.export(tiny.config('digits', 'tiny'), path)
