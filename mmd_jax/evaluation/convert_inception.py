"""Converts pytorch-fid's Inception weights to the .npz that mmd_jax loads.

  python -m mmd_jax.evaluation.convert_inception \
      pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The .pth is pytorch-fid's port of TensorFlow's 2015-12-05 Inception graph
(the FID standard). Reading it needs torch; nothing else in mmd_jax does.
"""
from __future__ import annotations

import sys

from mmd_jax.workdir import fs


def read_torch_state_dict(path: str) -> dict:
  try:
    import torch
  except ImportError:
    raise SystemExit('error: reading a .pth file needs torch: '
                     'pip install torch (CPU is enough)') from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(src: str, dst: str) -> int:
  from mmd_jax.evaluation import inception
  arrays = inception.torch_to_flax_arrays(read_torch_state_dict(src))
  fs.save_npz(dst, **arrays)
  inception.load_params(dst)  # fails here, by name, if anything is off
  return len(arrays)


def main(argv):
  if len(argv) != 3:
    print(__doc__.strip(), file=sys.stderr)
    return 2
  src, dst = argv[1], argv[2]
  if not fs.isfile(src):
    print(f'error: {src} does not exist', file=sys.stderr)
    return 2
  n = convert(src, dst)
  print(f'wrote {n} arrays to {dst}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
