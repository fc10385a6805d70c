import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update('jax_enable_x64', False)


@pytest.fixture
def repo_root():
  return ROOT
