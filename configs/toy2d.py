"""2-D toy: the asymmetric 6-mode mixture of ALGORITHMS.md §6.

Variants (`--config=configs/toy2d.py:ARG`):
  (none)  the default run: teacher (15k steps) then evaluate.
  tiny    a seconds-long run for tests.
"""
from configs import default


def get_config(arg=None):
  c = default.get_base_config()
  c.data.name = 'toy2d'
  c.data.toy_name = 'asymmetric_mixture'
  c.model.name = 'mlp'
  # ~0.4M parameters: 16 ms/step on 2 cores, so teacher + evaluate fit in
  # the 8-minute budget.
  c.model.width = 192
  c.model.num_blocks = 3
  c.teacher.num_train_steps = 15_000
  c.teacher.batch_size = 512
  c.teacher.learning_rate = 1e-3
  c.eval.num_samples = 4000
  if arg == 'tiny':
    c.model.width = 32
    c.model.num_blocks = 1
    c.teacher.num_train_steps = 40
    c.teacher.batch_size = 64
    c.teacher.warmup_steps = 10
    c.checkpoint.every_steps = 20
    c.log.every_steps = 10
    c.log.num_preview_samples = 200
    c.eval.num_samples = 256
    c.eval.batch_size = 256
    c.eval.teacher_steps = (1, 4)
  elif arg not in (None, ''):
    raise ValueError(f'unknown toy2d config variant {arg!r} (tiny)')
  return c
