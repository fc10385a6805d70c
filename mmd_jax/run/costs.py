"""What a trained job cost (report rows' `cost`, DESIGN.md §3.3): training
examples, teacher network evaluations and training wall time, including
the earlier jobs whose own output it started from (those its `needs`
name)."""
from __future__ import annotations


def job_cost(job, jobs_by_name: dict, read_meta) -> dict:
  """`read_meta(job)`: the job's stage.json (or None). Examples and teacher
  evaluations come from the job's declared sizes; the wall time from its
  stage.json (None when no job of the chain recorded one)."""
  examples = teacher_evals = 0
  seconds, known = 0.0, False
  todo, seen = [job], set()
  while todo:
    job = todo.pop()
    if job.name in seen:
      continue
    seen.add(job.name)
    n = int(job.num_steps) * int(job.batch_size)
    examples += n
    teacher_evals += n * job.teacher_evals_per_example
    meta = read_meta(job) or {}
    s = meta.get('train_seconds')
    if s is None and meta.get('seconds_per_step') is not None:
      s = meta['seconds_per_step'] * job.num_steps
    if s is not None:
      seconds, known = seconds + float(s), True
    todo += [jobs_by_name[n.split('/')[0]] for n in job.needs
             if n.split('/')[0] in jobs_by_name]
  return {'train_examples': examples, 'teacher_evals': int(teacher_evals),
          'train_seconds': round(seconds, 1) if known else None}
