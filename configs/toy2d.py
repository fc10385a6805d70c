"""2-D toy: the asymmetric 6-mode mixture of ALGORITHMS.md §6.

Variants (`--config=configs/toy2d.py:ARG`):
  (none)  the default run: teacher (15k steps) then evaluate.
  mm      teacher, then moment-matching students (alternating and
          parameter-space) at k in {1, 2, 4, 8}, then evaluate.
  tiny    a seconds-long run for tests; tiny_mm adds tiny students.
"""
from configs import default


def get_config(arg=None):
  c = default.get_base_config()
  c.data.name = 'toy2d'
  c.data.toy_name = 'asymmetric_mixture'
  c.model.name = 'mlp'
  # 0.56M parameters, the embedding entering once: 16 ms/step on 2 cores,
  # so teacher + evaluate fit in 8 minutes. At equal cost this beat a
  # width-192 net conditioned in every block (ED 0.00014 vs 0.00035 at
  # 256 steps, 16k samples; floor 0.00009).
  c.model.width = 256
  c.model.num_blocks = 3
  c.model.block_conditioning = False
  c.teacher.num_train_steps = 15_000
  c.teacher.batch_size = 512
  c.teacher.learning_rate = 1e-3
  c.eval.num_samples = 4000
  # Moment matching (ALGORITHMS.md §6): lr 1e-4, batch 512, w = 1 + SNR.
  c.distill.num_train_steps = 3000
  c.distill.batch_size = 512
  c.distill.learning_rate = 1e-4
  c.distill.warmup_steps = 200
  c.distill.sampling_steps = (1, 2, 4, 8)
  if arg in ('mm', 'tiny_mm'):
    c.stages = ('teacher', 'mm_alternating', 'mm_parameter', 'evaluate')
  if arg in ('tiny', 'tiny_mm'):
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
    c.distill.num_train_steps = 6
    c.distill.batch_size = 64
    c.distill.warmup_steps = 2
    c.distill.sampling_steps = (2,)
  elif arg not in (None, '', 'mm'):
    raise ValueError(f'unknown toy2d config variant {arg!r} (mm, tiny, tiny_mm)')
  return c
