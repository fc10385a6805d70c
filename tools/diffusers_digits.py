"""A teacher trained elsewhere, for real: a class-conditional diffusers
UNet2DModel on the 8x8 digits, trained with diffusers' own DDPMScheduler,
and sampled with diffusers' own loop. Needs torch and diffusers, not JAX:

  python3 -m venv /tmp/tvenv
  /tmp/tvenv/bin/pip install torch==2.13.0 diffusers safetensors scikit-learn
  /tmp/tvenv/bin/python tools/diffusers_digits.py train --out=DIR
  /tmp/tvenv/bin/python tools/diffusers_digits.py sample --out=DIR \
      --num_samples=2000 --output=diffusers_samples.npz

`train` writes DIR/unet (config.json, diffusion_pytorch_model.safetensors)
and DIR/scheduler (scheduler_config.json), the layout of a diffusers
pipeline; mmd_jax imports it with --config.teacher.checkpoint=DIR/unet.
`sample` runs DDPMScheduler's 1000 ancestral steps with the labels
mmd_jax's evaluation uses (0..9 cycling) and writes samples (NHWC, in
[-1, 1]) and labels; `python -m mmd_jax.evaluation.score_samples` scores
them with the project's digits scorer (README, "Distil a diffusers or EDM
teacher").
"""
import argparse
import copy
import importlib.util
import os
import time

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_train():
  """The project's training split (mmd_jax/data/digits.py, read without
  importing the package, which needs JAX)."""
  path = os.path.join(ROOT, 'mmd_jax', 'data', 'digits.py')
  spec = importlib.util.spec_from_file_location('digits', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  (x, y), _ = mod.load_digits_split()
  return torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).long()


def model():
  return UNet2DModel(
      sample_size=8, in_channels=1, out_channels=1,
      block_out_channels=(16, 32), layers_per_block=1,
      down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
      up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
      norm_num_groups=4, attention_head_dim=8, num_class_embeds=10)


def ema_update(ema, net, decay: float, step: int):
  """The EMA with warm-up min(decay, (1 + step) / (10 + step))."""
  with torch.no_grad():
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters()):
      pe.mul_(d).add_(p, alpha=1 - d)


def dispatch(p: argparse.ArgumentParser, commands: dict):
  """Adds --threads, parses, and runs the chosen command."""
  p.add_argument('--threads', type=int, default=0,
                 help='torch CPU threads (0: torch\'s default)')
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  commands[a.command](a)


def train(a):
  torch.manual_seed(0)
  x, y = digits_train()
  net = model()
  ema = copy.deepcopy(net).eval()
  sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear',
                        prediction_type='epsilon')
  opt = torch.optim.Adam(net.parameters(), lr=a.learning_rate)
  print(f'{sum(p.numel() for p in net.parameters())} parameters, '
        f'{len(x)} training images')
  t0 = time.time()
  for step in range(a.steps):
    idx = torch.randint(0, len(x), (a.batch_size,))
    x0, labels = x[idx], y[idx]
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (a.batch_size,))
    pred = net(sched.add_noise(x0, noise, t), t, labels).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    ema_update(ema, net, a.ema, step)
    if (step + 1) % 500 == 0:
      print(f'step {step + 1}/{a.steps} loss {loss.item():.4f} '
            f'{(step + 1) / (time.time() - t0):.1f} steps/s', flush=True)
  ema.save_pretrained(os.path.join(a.out, 'unet'), safe_serialization=True)
  sched.save_pretrained(os.path.join(a.out, 'scheduler'))
  print(f'wrote {a.out}/unet and {a.out}/scheduler')


@torch.no_grad()
def sample(a):
  net = UNet2DModel.from_pretrained(os.path.join(a.out, 'unet')).eval()
  sched = DDPMScheduler.from_pretrained(os.path.join(a.out, 'scheduler'))
  sched.set_timesteps(1000)
  labels = torch.arange(a.num_samples) % 10
  g = torch.Generator().manual_seed(a.seed)
  out = []
  t0 = time.time()
  for i in range(0, a.num_samples, a.batch_size):
    lab = labels[i:i + a.batch_size]
    z = torch.randn(len(lab), 1, 8, 8, generator=g)
    for t in sched.timesteps:
      eps = net(z, t, lab).sample
      z = sched.step(eps, t, z, generator=g).prev_sample
    out.append(z.permute(0, 2, 3, 1).numpy())
    print(f'{i + len(lab)}/{a.num_samples} samples, '
          f'{time.time() - t0:.0f}s', flush=True)
  np.savez(a.output, samples=np.concatenate(out).astype(np.float32),
           labels=labels.numpy().astype(np.int32))
  print(f'wrote {a.output}')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('command', choices=('train', 'sample'))
  p.add_argument('--out', required=True)
  p.add_argument('--steps', type=int, default=6000)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--learning_rate', type=float, default=1e-3)
  p.add_argument('--ema', type=float, default=0.999)
  p.add_argument('--num_samples', type=int, default=2000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--output', default='diffusers_samples.npz')
  dispatch(p, {'train': train, 'sample': sample})


if __name__ == '__main__':
  main()
