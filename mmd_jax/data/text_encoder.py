"""A small deterministic text encoder for the embedded caption benchmarks.

Each word of a caption gets a fixed pseudo-random vector (seeded by the
word itself), plus a sinusoidal code of its position; captions are padded
to `length` tokens with mask 0. It needs no download and always gives the
same table, so the benchmarks are reproducible; it tests the conditioning
path (tokens, mask, null caption, guidance), not language understanding.
Real runs bring CLIP or T5 embeddings in the same file format
(data/captions.py).

  python -m mmd_jax.data.text_encoder CAPTIONS.txt OUT.npz

writes the caption table of CAPTIONS.txt (one caption per line) with the
empty caption as the null condition: add `x` and `caption_id` to train.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np

LENGTH, DIM = 8, 32


def _word(word: str, dim: int) -> np.ndarray:
  seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], 'little')
  return np.random.default_rng(seed).standard_normal(dim) / np.sqrt(dim)


def _position(i: int, dim: int) -> np.ndarray:
  freqs = 1.0 / (10.0 ** (np.arange(dim // 2) / (dim // 2)))
  return 0.1 * np.concatenate([np.sin(i * freqs), np.cos(i * freqs)])


def encode_one(caption: str, length: int = LENGTH, dim: int = DIM):
  """(emb [length, dim], mask [length]); the empty caption is one
  start-of-text token, as CLIP's is never fully masked either."""
  words = ['<start>'] + caption.lower().split()
  if len(words) > length:
    raise ValueError(f'caption {caption!r} has {len(words) - 1} words; '
                     f'at most {length - 1} fit')
  emb = np.zeros((length, dim), np.float32)
  mask = np.zeros((length,), np.float32)
  for i, w in enumerate(words):
    emb[i] = _word(w, dim) + _position(i, dim)
    mask[i] = 1.0
  return emb, mask


def encode(captions, length: int = LENGTH, dim: int = DIM) -> dict:
  """The caption table of `captions`, with the empty caption as null."""
  rows = [encode_one(c, length, dim) for c in captions]
  null_emb, null_mask = encode_one('', length, dim)
  return {'emb': np.stack([e for e, _ in rows]),
          'mask': np.stack([m for _, m in rows]),
          'null_emb': null_emb, 'null_mask': null_mask,
          'captions': np.asarray(list(captions), dtype=np.str_)}


def main(argv):
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[-4].strip(), file=sys.stderr)
    return 2
  with open(argv[1]) as f:
    captions = [line.strip() for line in f if line.strip()]
  np.savez(argv[2], **encode(captions))
  print(f'{len(captions)} captions -> {argv[2]}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
