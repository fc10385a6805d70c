"""Runs the bad-input cases of docs/reliability.md as a new user would, on
tiny configs, and prints a Markdown table: case, exit code, the last line
on stderr, and what the workdir holds afterwards compared with before.

  python tools/hostile_cases.py [--keep DIR]

Every case is a real command line (`python -m mmd_jax.main` or
`mmd_jax.sample`), CPU only, a few seconds each (about 4 minutes in all).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config=configs/toy2d.py:tiny', '--config.stages=("teacher",)']
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'diffusers', 'ddpm_blocks')
CLOSED = 'http://127.0.0.1:9'


def _env(**extra):
  return dict(os.environ, JAX_PLATFORMS='cpu', **extra)


def main_cmd(w, *args):
  return [sys.executable, '-m', 'mmd_jax.main', f'--workdir={w}', *args]


def sample_cmd(stage, *args):
  return [sys.executable, '-m', 'mmd_jax.sample', f'--workdir={stage}',
          f'--output={stage}/../s.npz', *args]


def listing(w) -> dict:
  """{relative path: sha1} of every file under w."""
  out = {}
  for root, _, files in os.walk(w):
    for f in files:
      p = os.path.join(root, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, w)] = hashlib.sha1(fh.read()).hexdigest()[:8]
  return out


def disk_change(before: dict, after: dict) -> str:
  if before == after:
    return 'unchanged' if before else 'nothing written'
  added = sorted(set(after) - set(before))
  gone = sorted(set(before) - set(after))
  changed = sorted(k for k in set(before) & set(after)
                   if before[k] != after[k])
  parts = []
  for word, names in (('added', added), ('removed', gone),
                      ('changed', changed)):
    if names:
      tops = sorted({n.split(os.sep)[0] + (os.sep + n.split(os.sep)[1]
                                           if os.sep in n else '')
                     for n in names})
      parts.append(f'{word} {len(names)} file(s) under {", ".join(tops[:3])}')
  return '; '.join(parts)


def run_case(name, cmd, w, env=None, timeout=300):
  before = listing(w) if os.path.isdir(w) else {}
  r = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True,
                     text=True, timeout=timeout)
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith(('error:', 'pre-empted:'))]
  last = errors[-1] if errors else (lines[-1] if lines else '')
  if r.returncode == 0 and r.stdout.strip():
    last = r.stdout.strip().splitlines()[-1]
  after = listing(w) if os.path.isdir(w) else {}
  tb = ' (traceback!)' if 'Traceback' in r.stderr else ''
  print(f'| {name} | {r.returncode} | `{last[:230]}`{tb} | '
        f'{disk_change(before, after)} |', flush=True)
  return r


def trained(tmp, name, steps=40, extra=()):
  w = os.path.join(tmp, name)
  r = subprocess.run(main_cmd(w, *TINY, f'--config.teacher.num_train_steps='
                              f'{steps}', *extra), cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return w


def _garble(step_dir, flip=False):
  """Overwrites every file, or (flip) XORs 2,000 bytes in the middle of the
  largest array data file."""
  paths = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  if not flip:
    for p in paths:
      open(p, 'wb').write(b'\x00garbage')
    return
  p = max((p for p in paths if os.sep + 'd' + os.sep in p),
          key=os.path.getsize)
  data = bytearray(open(p, 'rb').read())
  start = max(0, len(data) // 2 - 1000)
  for i in range(start, min(len(data), start + 2000)):
    data[i] ^= 0xFF
  open(p, 'wb').write(bytes(data))


def cases(tmp):
  print('| case | exit | line printed | workdir afterwards |')
  print('|---|---|---|---|')
  base = trained(tmp, 'base', 20)
  run_case('changed config on resume (model.width=64)', main_cmd(
      base, *TINY, '--config.teacher.num_train_steps=40',
      '--config.model.width=64'), base)
  w = trained(tmp, 'garbled', 20)
  for step in os.listdir(os.path.join(w, 'teacher', 'checkpoints')):
    _garble(os.path.join(w, 'teacher', 'checkpoints', step))
  run_case('every checkpoint unreadable', main_cmd(
      w, *TINY, '--config.teacher.num_train_steps=40'), w)
  run_case('... and run again', main_cmd(
      w, *TINY, '--config.teacher.num_train_steps=40'), w)
  w = trained(tmp, 'flipped', 40)
  _garble(os.path.join(w, 'teacher', 'checkpoints', '40', 'state'), flip=True)
  run_case('2,000 flipped bytes in the latest checkpoint (then sample)',
           main_cmd(w, *TINY, '--config.teacher.num_train_steps=60'), w)
  r = run_case('  sampling that teacher', sample_cmd(
      os.path.join(w, 'teacher'), '--steps=4', '--num_samples=64'), w)
  if r.returncode == 0:
    s = np.load(os.path.join(w, 's.npz'))['samples']
    print(f'|  samples finite | | {bool(np.all(np.isfinite(s)))} | |')
  _import_cases(tmp)
  _sample_cases(base)
  _input_cases(tmp, base)


def _import_cases(tmp):
  from safetensors.numpy import load_file, save_file
  for damage in ('int8', 'nan'):
    d = os.path.join(tmp, f'diffusers_{damage}')
    shutil.copytree(FIXTURE, d)
    f = os.path.join(d, 'diffusion_pytorch_model.safetensors')
    t = load_file(f)
    k = sorted(t)[0]
    t[k] = (t[k].astype(np.int8) if damage == 'int8'
            else np.full_like(t[k], np.nan))
    save_file(t, f)
    w = os.path.join(tmp, f'w_{damage}')
    run_case(f'diffusers teacher with {damage} weights', main_cmd(
        w, '--config=configs/digits.py:tiny', '--config.stages=("teacher",)',
        f'--config.teacher.checkpoint={d}'), w)
  c = os.path.join(tmp, 'complex.npz')
  np.savez(c, **{'params/Dense_0/kernel': np.ones((2, 2), np.complex64)})
  w = os.path.join(tmp, 'w_complex')
  run_case('.npz teacher with a complex leaf', main_cmd(
      w, *TINY, f'--config.teacher.checkpoint={c}'), w)
  d = os.path.join(tmp, 'diffusers_badjson')
  shutil.copytree(FIXTURE, d)
  with open(os.path.join(d, 'scheduler_config.json'), 'w') as fh:
    fh.write('{"_class_name": "DDPMScheduler",')
  w = os.path.join(tmp, 'w_badjson')
  run_case('malformed scheduler_config.json', main_cmd(
      w, '--config=configs/digits.py:tiny', '--config.stages=("teacher",)',
      f'--config.teacher.checkpoint={d}'), w)
  unfinished = os.path.join(tmp, 'unfinished')
  p = subprocess.Popen(main_cmd(unfinished, *TINY,
                                '--config.teacher.num_train_steps=100000',
                                '--config.checkpoint.every_steps=50'),
                       cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  ckpts = os.path.join(unfinished, 'teacher', 'checkpoints')
  import time
  while not (os.path.isdir(ckpts) and any(
      n.isdigit() for n in os.listdir(ckpts))):
    time.sleep(0.2)
  time.sleep(1.0)
  p.terminate()
  p.wait()
  w = os.path.join(tmp, 'w_unfinished')
  run_case('teacher directory of an unfinished run', main_cmd(
      w, '--config=configs/toy2d.py:tiny',
      '--config.stages=("teacher","mm_alternating")',
      f'--config.teacher.checkpoint={unfinished}/teacher'), w)


def _sample_cases(base):
  stage = os.path.join(base, 'teacher')
  for args in (['--steps=-3'], ['--steps=0'], ['--num_samples=-5'],
               ['--num_samples=0'], ['--batch_size=0'],
               ['--num_samples=100000000000'], ['--guidance=3']):
    run_case(f'sample {" ".join(args)}', sample_cmd(stage, *args), base)


def _input_cases(tmp, base):
  w = os.path.join(tmp, 'never')
  run_case('missing --config file', main_cmd(
      w, '--config=configs/nope.py'), w)
  bad = os.path.join(tmp, 'bad_config.py')
  with open(bad, 'w') as fh:
    fh.write('def get_config(:\n  pass\n')
  run_case('config file syntax error', main_cmd(w, f'--config={bad}'), w)
  run_case('key typo among several overrides', main_cmd(
      w, *TINY, '--config.teacher.num_train_steps=3',
      '--config.teacher.learning_ratee=1'), w)
  run_case('--config.teacher.num_train_steps=abc', main_cmd(
      w, *TINY, '--config.teacher.num_train_steps=abc'), w)
  run_case('unused section: distill.sampling_steps=(0,)', main_cmd(
      w, '--config=configs/toy2d.py:tiny',
      '--config.distill.sampling_steps=(0,)'), w)
  run_case('eval.guidance=3 on unlabelled data', main_cmd(
      w, *TINY, '--config.eval.guidance=3'), w)
  one = os.path.join(tmp, 'one_row.npy')
  np.save(one, np.zeros((1, 2), np.float32))
  run_case('1-row points file', main_cmd(
      w, *TINY, '--config.data.name=points', f'--config.data.path={one}'), w)
  wide = os.path.join(tmp, 'three_columns.npy')
  np.save(wide, np.zeros((100, 3), np.float32))
  run_case('3-column points file on a finished 2-D workdir', main_cmd(
      base, *TINY, '--config.data.name=points',
      f'--config.data.path={wide}'), base)
  gone = trained(tmp, 'no_checkpoints', 20)
  shutil.rmtree(os.path.join(gone, 'teacher', 'checkpoints'))
  run_case('finished stage with checkpoints/ deleted (eval)', main_cmd(
      gone, *TINY, '--mode=eval'), gone)
  ro = os.path.join(tmp, 'ro')
  shutil.copytree(base, ro)
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', ro],
                    capture_output=True).returncode == 0:
    subprocess.run(['cp', '-a', base + '/.', ro], check=True)
    subprocess.run(['mount', '-o', 'remount,ro', ro], check=True)
    run_case('existing workdir on read-only storage', main_cmd(
        ro, *TINY, '--config.teacher.num_train_steps=40'), ro)
    subprocess.run(['umount', ro], check=False)
  run_case('gs:// workdir without network or credentials', main_cmd(
      'gs://mmd-test/run', *TINY), w, env=_env(
          https_proxy=CLOSED, HTTPS_PROXY=CLOSED, http_proxy=CLOSED,
          HTTP_PROXY=CLOSED, GCE_METADATA_HOST='127.0.0.1:9',
          NO_GCE_CHECK='true'), timeout=120)


if __name__ == '__main__':
  keep = sys.argv[sys.argv.index('--keep') + 1] if '--keep' in sys.argv \
      else None
  tmp = keep or tempfile.mkdtemp(prefix='hostile_')
  os.makedirs(tmp, exist_ok=True)
  try:
    cases(tmp)
  finally:
    if not keep:
      shutil.rmtree(tmp, ignore_errors=True)
