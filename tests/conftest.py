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

import jax  # noqa: E402

jax.config.update('jax_enable_x64', False)


@pytest.fixture
def repo_root():
  return ROOT
