"""Caption embeddings from a diffusers pipeline's own text encoder, written
as mmd_jax's captions file (mmd_jax/data/captions.py). Needs torch and
transformers, not JAX; run it by hand:

  python3 -m venv /tmp/tvenv
  /tmp/tvenv/bin/pip install torch transformers diffusers safetensors
  /tmp/tvenv/bin/python tools/encode_captions.py --pipeline=DIR \
      --captions=captions.txt --output=F.npz \
      [--x=latents.npy --caption_ids=ids.npy] [--mask_padding] [--pooled]

`captions.txt` holds the K captions, one per line (no blank lines: a
caption id is a line number from 0). The file gets:
- `emb` [K, L, D]: the text encoder's last hidden state for each caption,
  tokenised as the pipeline does (padding to the tokenizer's
  model_max_length, 77 for CLIP);
- `mask` [K, L]: all ones, because Stable Diffusion's pipelines pass no
  attention mask to the UNet (it attends to the padding tokens' embeddings
  too). `--mask_padding` writes the tokenizer's mask instead, for a UNet
  trained with masked captions;
- `null_emb`, `null_mask`: the empty caption "", the null condition of
  classifier-free guidance and caption dropout;
- `captions` [K]: the texts; `pooled` [K, P] and `null_pooled` [P] with
  `--pooled` (the text encoder's pooled output);
- `x` and `caption_id` from `--x` (examples, NHWC: latents, or images in
  [-1, 1] for a run with `latent.vae_checkpoint`) and
  `--caption_ids` (int, one row of captions.txt per example); without
  them, `caption_id` is 0..K-1 and there is no `x`: a prompts-only file.
"""
import argparse
import os

import numpy as np
import torch
from transformers import AutoTokenizer, CLIPTextModel


def encode(pipeline: str, texts, mask_padding: bool = False,
           chunk: int = 64):
  """{'emb', 'mask', 'pooled'} of `texts` with DIR/tokenizer and
  DIR/text_encoder, in float32."""
  tok = AutoTokenizer.from_pretrained(os.path.join(pipeline, 'tokenizer'))
  enc = CLIPTextModel.from_pretrained(os.path.join(pipeline, 'text_encoder'))
  enc.eval()
  parts = []
  for i in range(0, len(texts), chunk):   # a bounded batch per forward
    batch = tok(list(texts[i:i + chunk]), padding='max_length',
                max_length=tok.model_max_length, truncation=True,
                return_tensors='pt')
    with torch.no_grad():
      out = enc(batch.input_ids)
    mask = (batch.attention_mask.numpy() if mask_padding
            else np.ones(batch.input_ids.shape))
    parts.append({'emb': out.last_hidden_state.float().numpy(),
                  'mask': mask.astype(np.float32),
                  'pooled': out.pooler_output.float().numpy()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--pipeline', required=True)
  p.add_argument('--captions', required=True)
  p.add_argument('--output', required=True)
  p.add_argument('--x', default='')
  p.add_argument('--caption_ids', default='')
  p.add_argument('--mask_padding', action='store_true')
  p.add_argument('--pooled', action='store_true')
  a = p.parse_args()
  texts = [l.rstrip('\r\n') for l in open(a.captions, encoding='utf-8')]
  while texts and not texts[-1].strip():
    texts.pop()   # a trailing newline; inner blank lines are rows
  blank = [i for i, t in enumerate(texts) if not t.strip()]
  if blank:
    p.error(f'{a.captions}: line {blank[0] + 1} is blank; every line is a '
            'row of the table (caption ids count lines)')
  table = encode(a.pipeline, texts, a.mask_padding)
  null = encode(a.pipeline, [''], a.mask_padding)
  out = {'emb': table['emb'], 'mask': table['mask'],
         'null_emb': null['emb'][0], 'null_mask': null['mask'][0],
         'captions': np.array(texts)}
  if a.pooled:
    out['pooled'], out['null_pooled'] = table['pooled'], null['pooled'][0]
  if bool(a.x) != bool(a.caption_ids):
    p.error('--x and --caption_ids go together')
  if a.x:
    out['x'] = np.load(a.x).astype(np.float32)
    out['caption_id'] = np.load(a.caption_ids).astype(np.int64)
  else:
    out['caption_id'] = np.arange(len(texts))
  np.savez(a.output, **out)
  print(f'wrote {len(texts)} captions ({out["emb"].shape[1]} tokens x '
        f'{out["emb"].shape[2]}) to {a.output}'
        + ('' if a.x else ' (prompts only: no x)'))


if __name__ == '__main__':
  main()
