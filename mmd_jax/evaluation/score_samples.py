"""Scores a file of samples with the project's metrics for a config's data,
as evaluation scores a model's (the same reference set and scorer):

  python -m mmd_jax.evaluation.score_samples --config=configs/digits.py \
      --workdir=W --samples=F.npz [--output=scores.json]

F.npz holds `samples` (N, ...) in data space and, for labelled data,
`labels`. Cached assets (the digits classifier, Inception reference
statistics) are read from or written to W/evaluate. Prints the metrics and
the reference row as JSON.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from mmd_jax.workdir import fs


def score(config, workdir: str, samples, labels=None) -> dict:
  from mmd_jax.data import load_dataset
  from mmd_jax.evaluation.evaluate import Scorer
  scorer = Scorer(config, load_dataset(config.data), workdir)
  return {'metrics': scorer.score(samples, labels),
          'reference': scorer.reference}


def main(argv):
  del argv
  f = flags.FLAGS
  d = fs.load_npz(f.samples)
  samples, labels = d['samples'], d.get('labels')
  out = score(f.config, f.workdir, samples, labels)
  out.update(samples=f.samples, num_samples=int(len(samples)))
  text = json.dumps(out, indent=2)
  print(text)
  if f.output:
    fs.write_text(f.output, text)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where evaluation assets are cached.')
  flags.DEFINE_string('samples', None, '.npz with samples (and labels).')
  flags.DEFINE_string('output', '', 'Also write the JSON here.')
  flags.mark_flags_as_required(['config', 'workdir', 'samples'])
  app.run(lambda argv: sys.exit(main(argv)))
