import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent XLA compilation cache for the whole session, in-process and
# in every subprocess: dozens of command-line tests compile the same tiny
# programs, and recompiling them dominated the suite's time. It changes no
# result (a cache hit is the identical executable).
_CACHE = os.path.join(ROOT, '.pytest_cache', 'jax_compilation_cache')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# Tests compile hundreds of small programs and run each a few times, so
# LLVM's optimisation of the generated CPU code costs more than it saves.
# On a fresh clone with 2 cores, the same suite took 656 s of pytest
# (20m51 CPU) at level 0 and 896 s (28m45 CPU) at the default level. Speed
# is never asserted in tests (benchmarks measure it at the default level).
# Subprocesses inherit the flag through `tiny.xla_flags()`; the mesh test
# opts out (its comment says why).
#
# XLA's MLIR fusion emitters (the CPU default) take about twice as long to
# compile a step as the elemental emitters they replaced, and run these
# tiny programs no faster: the device-check UViT's teacher step compiled
# in 2.6 s without them and 5.9 s with them, and stepped in 107 ms vs
# 120-138 ms. The whole suite on a fresh clone: 723 s of pytest with them,
# 556 s without (CPU 24m35 vs 19m16).
FAST_COMPILE = ('--xla_backend_optimization_level=0',
                '--xla_cpu_use_fusion_emitters=false')
for _flag in FAST_COMPILE:
  if _flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                               + _flag).strip()

# As mmd_jax.main does for its runs: XLA:CPU's 40 s collective timeout
# aborted multi-device runs in CI on a busy 2-core host (run/cli.py says
# more). (mmd_jax.main itself defines absl flags: not imported here.)
from mmd_jax.run.cli import patient_cpu_collectives  # noqa: E402
patient_cpu_collectives()

import jax  # noqa: E402

jax.config.update('jax_enable_x64', False)


@pytest.fixture
def repo_root():
  return ROOT


# The slowest tests first: with two xdist workers the suite's wall time is
# about half its sum plus whatever single long test starts last, so a long
# test must not be the one that starts last. (Measured durations; a test
# missing here just runs in file order after these.)
SLOW_FIRST = (
    'test_mesh_equivalence.py::',
    'test_bench.py::test_the_device_check_command',
    'test_models.py::test_uvit_patches',
    'test_multiprocess.py::',
    'test_image_configs.py::test_smoke_runs',
    'test_resilience.py::',
    'test_diffusers_unet.py::test_a_diffusers_teacher_is_imported',
    'test_vae.py::test_latent_pipeline',
    'test_diffusers_cond.py::test_a_pipeline_is',
    'test_captions.py::test_a_file_of_my_own',
    'test_captions.py::test_digits_text_tiny',
)


def pytest_collection_modifyitems(session, config, items):
  def rank(item):
    for i, prefix in enumerate(SLOW_FIRST):
      if prefix in item.nodeid:
        return i
    return len(SLOW_FIRST)
  items.sort(key=rank)   # stable: file order within each rank
