"""Caption-conditioned 2-D benchmark (data/toy2d_text.py): 8 modes on a
ring, captions that name subsets of them ("left", "upper right", ...),
embedded by the deterministic encoder of data/text_encoder.py.

The teacher is the toy2d MLP conditioned on the caption's pooled (masked
mean) embedding, trained with 10% caption dropout to the null (empty)
caption. Then an 8-step mm_alternating student and a one-step Diff-Instruct
generator (trained for 6x the student's updates: docs/captions.md). Metrics: caption accuracy (samples within 4 stds of a mode
their caption allows) and the energy distance per caption to exact
conditional samples, averaged over captions; 3 evaluation seeds.

`--config.data.name=points --config.data.path=F.npz` runs the same on a
caption file of your own (data/captions.py); caption accuracy then needs
known modes and is left out, the per-caption energy distance is against
the file's own examples of each caption.

Variants: (none) the benchmark (about 35 minutes on one core); tiny: a
seconds-long run for tests.
"""
from configs import toy2d


def get_config(arg=None):
  c = toy2d.get_config('tiny' if arg == 'tiny' else None)
  c.data.name = 'toy2d_text'
  c.model.conditional = True
  c.teacher.label_dropout = 0.1
  c.stages = ('teacher', 'mm_alternating', 'diff_instruct', 'evaluate')
  c.distill.sampling_steps = (8,)
  c.eval.num_seeds = 3
  c.eval.teacher_steps = (8, 256)
  # Diff-Instruct: 6x the students' updates at 3x their learning rate.
  # One run each on this teacher: caption accuracy 0.913 (1x, 1e-4), 0.949
  # (3x, 1e-4), 0.964 (3x, 3e-4), 0.973 (6x, 3e-4); every miss is a sample
  # between two modes (docs/captions.md). [ours]
  c.emd.num_train_steps = 6 * c.distill.num_train_steps
  c.emd.generator_learning_rate = 3e-4
  c.emd.score_learning_rate = 3e-4
  if arg == 'tiny':
    c.emd.num_train_steps = 0
    c.distill.num_train_steps = 20
    c.distill.batch_size = 64
    c.distill.warmup_steps = 5
    c.distill.sampling_steps = (2,)
    c.eval.num_seeds = 1
    c.eval.num_samples = 400
    c.eval.batch_size = 200
    c.eval.teacher_steps = (4,)
  return c
