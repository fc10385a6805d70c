"""A latent, caption-conditioned teacher trained elsewhere, for real: a small
AutoencoderKL and a UNet2DConditionModel on the captioned 8x8 digits
(configs/digits_text.py), trained and sampled with diffusers' own
DDPMScheduler, then imported into mmd_jax as a pipeline and distilled.
Needs torch and diffusers, not JAX (the captions file comes from JAX):

  python -m mmd_jax.data.export --config=configs/digits_text.py \
      --output=digits_text_train.npz
  /tmp/tvenv/bin/python tools/diffusers_digits_text.py train \
      --data=digits_text_train.npz --out=PIPE
  /tmp/tvenv/bin/python tools/diffusers_digits_text.py sample \
      --data=digits_text_train.npz --out=PIPE --output=samples.npz

`train` writes the pipeline PIPE: vae/ (AutoencoderKL: 8x8x1 images to
4x4x4 latents, its scaling_factor set so the latents have unit std),
unet/ (UNet2DConditionModel attending to the captions' token embeddings,
10% caption dropout to the empty caption), scheduler/ and
model_index.json. The UNet is trained on the posterior means, the latents
mmd_jax's import encodes (models/diffusers_latent.py).
`sample` runs DDPMScheduler's 1000 ancestral steps for caption rows
0..K-1 cycling (mmd_jax's evaluation order), decodes them, and writes
`samples` (NHWC, in [-1, 1]) and `labels` (the caption ids) for
`python -m mmd_jax.evaluation.score_samples`.
"""
import argparse
import copy
import json
import os
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

# The sibling tool (this script's directory is on sys.path when it runs).
from diffusers_digits import dispatch, ema_update


def load(path):
  d = np.load(path, allow_pickle=False)
  t = lambda k: torch.from_numpy(np.asarray(d[k], np.float32))
  return {'x': t('x').permute(0, 3, 1, 2), 'ids': torch.from_numpy(
      d['caption_id'].astype(np.int64)), 'emb': t('emb'), 'mask': t('mask'),
          'null_emb': t('null_emb'), 'null_mask': t('null_mask')}


def vae_model():
  return AutoencoderKL(
      in_channels=1, out_channels=1, sample_size=8, latent_channels=4,
      down_block_types=('DownEncoderBlock2D',) * 2,
      up_block_types=('UpDecoderBlock2D',) * 2,
      block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)


def unet_model(dim: int):
  return UNet2DConditionModel(
      sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
      block_out_channels=(32, 64),
      down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
      cross_attention_dim=dim, attention_head_dim=4, norm_num_groups=8)


def train_vae(a, x):
  torch.manual_seed(0)
  vae = vae_model()
  opt = torch.optim.Adam(vae.parameters(), lr=a.vae_learning_rate)
  t0 = time.time()
  for step in range(a.vae_steps):
    xb = x[torch.randint(0, len(x), (a.batch_size,))]
    post = vae.encode(xb).latent_dist
    rec = vae.decode(post.sample()).sample
    loss = torch.nn.functional.mse_loss(rec, xb, reduction='sum') / len(
        xb) + a.kl_weight * post.kl().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (step + 1) % 500 == 0:
      print(f'vae step {step + 1}/{a.vae_steps} loss {loss.item():.3f} '
            f'{(step + 1) / (time.time() - t0):.1f} steps/s', flush=True)
  vae.eval()
  with torch.no_grad():
    mean = vae.encode(x).latent_dist.mean
    rmse = (vae.decode(mean).sample - x).pow(2).mean().sqrt().item()
  scale = float(1.0 / mean.std())
  vae.register_to_config(scaling_factor=scale)
  print(f'vae: reconstruction rmse {rmse:.4f} (data in [-1, 1]), '
        f'latent std {1 / scale:.4f}, scaling_factor {scale:.4f}')
  return vae, mean * scale


def train_unet(a, d, z):
  torch.manual_seed(1)
  net = unet_model(d['emb'].shape[-1])
  ema = copy.deepcopy(net).eval()
  # clip_sample=False, as Stable Diffusion's: latents are not in [-1, 1],
  # and clipping x0 there wrecks the samples (fd 140 vs 8 real-vs-real).
  sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear',
                        prediction_type='epsilon', clip_sample=False)
  opt = torch.optim.Adam(net.parameters(), lr=a.learning_rate)
  print(f'unet: {sum(p.numel() for p in net.parameters())} parameters')
  t0 = time.time()
  for step in range(a.steps):
    idx = torch.randint(0, len(z), (a.batch_size,))
    z0, ids = z[idx], d['ids'][idx]
    emb, mask = d['emb'][ids], d['mask'][ids]
    drop = torch.rand(len(ids)) < a.caption_dropout
    emb = torch.where(drop[:, None, None], d['null_emb'][None], emb)
    mask = torch.where(drop[:, None], d['null_mask'][None], mask)
    noise = torch.randn_like(z0)
    t = torch.randint(0, 1000, (len(ids),))
    pred = net(sched.add_noise(z0, noise, t), t, encoder_hidden_states=emb,
               encoder_attention_mask=mask).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    ema_update(ema, net, a.ema, step)
    if (step + 1) % 500 == 0:
      print(f'unet step {step + 1}/{a.steps} loss {loss.item():.4f} '
            f'{(step + 1) / (time.time() - t0):.1f} steps/s', flush=True)
  return ema, sched


def train(a):
  d = load(a.data)
  vae, z = train_vae(a, d['x'])
  unet, sched = train_unet(a, d, z.detach())
  vae.save_pretrained(os.path.join(a.out, 'vae'), safe_serialization=True)
  unet.save_pretrained(os.path.join(a.out, 'unet'), safe_serialization=True)
  sched.save_pretrained(os.path.join(a.out, 'scheduler'))
  with open(os.path.join(a.out, 'model_index.json'), 'w') as f:
    json.dump({'_class_name': 'StableDiffusionPipeline',
               'vae': ['diffusers', 'AutoencoderKL'],
               'unet': ['diffusers', 'UNet2DConditionModel'],
               'scheduler': ['diffusers', 'DDPMScheduler']}, f, indent=2)
  print(f'wrote the pipeline {a.out}')


@torch.no_grad()
def sample(a):
  d = load(a.data)
  vae = AutoencoderKL.from_pretrained(os.path.join(a.out, 'vae')).eval()
  net = UNet2DConditionModel.from_pretrained(os.path.join(a.out,
                                                          'unet')).eval()
  sched = DDPMScheduler.from_pretrained(os.path.join(a.out, 'scheduler'))
  sched.set_timesteps(a.sampling_steps)
  ids = torch.arange(a.num_samples) % len(d['emb'])
  g = torch.Generator().manual_seed(a.seed)
  out, t0 = [], time.time()
  for i in range(0, a.num_samples, a.sample_batch_size):
    b = ids[i:i + a.sample_batch_size]
    z = torch.randn(len(b), 4, 4, 4, generator=g)
    for t in sched.timesteps:
      eps = net(z, t, encoder_hidden_states=d['emb'][b],
                encoder_attention_mask=d['mask'][b]).sample
      z = sched.step(eps, t, z, generator=g).prev_sample
    x = vae.decode(z / vae.config.scaling_factor).sample
    out.append(x.permute(0, 2, 3, 1).numpy())
    print(f'{i + len(b)}/{a.num_samples} samples, {time.time() - t0:.0f}s',
          flush=True)
  np.savez(a.output, samples=np.concatenate(out).astype(np.float32),
           labels=ids.numpy().astype(np.int32))
  print(f'wrote {a.output}')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('command', choices=('train', 'sample'))
  p.add_argument('--data', required=True, help='captions .npz (export)')
  p.add_argument('--out', required=True, help='the pipeline directory')
  p.add_argument('--vae_steps', type=int, default=3000)
  p.add_argument('--vae_learning_rate', type=float, default=1e-3)
  p.add_argument('--kl_weight', type=float, default=1e-3)
  p.add_argument('--steps', type=int, default=12000)
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--learning_rate', type=float, default=5e-4)
  p.add_argument('--caption_dropout', type=float, default=0.1)
  p.add_argument('--ema', type=float, default=0.999)
  p.add_argument('--num_samples', type=int, default=2000)
  p.add_argument('--sampling_steps', type=int, default=1000)
  p.add_argument('--sample_batch_size', type=int, default=500)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--output', default='diffusers_samples.npz')
  dispatch(p, {'train': train, 'sample': sample})


if __name__ == '__main__':
  main()
