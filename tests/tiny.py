"""Tiny configs and in-process runs for the pipeline tests."""
import importlib
import os


def config(name: str, arg: str | None = None, overrides: dict | None = None):
  """configs/<name>.py:<arg>, with {'section.key': value} overrides."""
  c = importlib.import_module(f'configs.{name}').get_config(arg)
  if overrides:
    c.update_from_flattened_dict(overrides)
  return c


def run(name: str, arg: str | None, workdir, overrides: dict | None = None):
  """Trains and evaluates in this process; returns the config."""
  from mmd_jax.run import runner
  c = config(name, arg, overrides)
  runner.run(c, str(workdir))
  return c


def xla_flags(devices: int | None = None, fast_compile: bool = True) -> str:
  """This session's XLA flags (conftest's), with `devices` CPU devices, for
  a subprocess's environment; `fast_compile=False` drops conftest's
  fast-compile flags (default code generation)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if not fast_compile:
    flags = ' '.join(f for f in flags.split() if not f.startswith(
        ('--xla_backend_optimization_level', '--xla_cpu_use_fusion_emitters')))
  if devices:
    flags += f' --xla_force_host_platform_device_count={devices}'
  return flags.strip()


# A program a test runs for long (hundreds of steps over tens of thousands
# of chains, or a training loop) compiles with LLVM's optimisation: at the
# suite's level 0 (conftest) it runs ~3x slower, which costs more than the
# compile saves (the e-step test's 600 Langevin steps: 26 s at level 0,
# 8 s at level 2, each compiled in 1-2 s).
RUN_FAST = {'xla_backend_optimization_level': 2}


def jit_run_fast(fn, **kw):
  """jax.jit(fn) compiled for a long run (see RUN_FAST)."""
  import jax
  return jax.jit(fn, compiler_options=RUN_FAST, **kw)


def why(r, chars: int = 4000) -> str:
  """What a failed subprocess (a CompletedProcess) said, for an assertion
  message. A process killed by a signal under absl dumps each thread's
  stack and then the names of ~100 extension modules, and a plain tail
  showed only those names: here the dump's own lines (which thread
  aborted, where) and the log lines before it are kept, the module list
  dropped."""
  import signal
  lines = [l for l in r.stderr.splitlines()
           if not l.startswith('Extension modules:') and '(total: ' not in l]
  head = f'exit code {r.returncode}'
  if r.returncode < 0:
    head += f' ({signal.Signals(-r.returncode).name})'
  fatal = next((i for i, l in enumerate(lines)
                if l.startswith('Fatal Python error')), None)
  if fatal is None:
    return head + '\n' + '\n'.join(lines)[-chars:]
  before = '\n'.join(lines[:fatal])[-chars // 2:]
  dump = '\n'.join(lines[fatal:])[:chars // 2]
  return f'{head}\n{before}\n{dump}'
