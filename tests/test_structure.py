"""The package's shape: no import cycles, a runner and command lines that
name no method, evaluation free of the loop and the methods, stage keys
that tell names apart."""
import ast
import os
import re

import jax
import numpy as np

from mmd_jax.run import runner
from mmd_jax import plugins as registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'mmd_jax')


def _modules() -> dict:
  """{dotted module name: path} for every .py file of the package."""
  out = {}
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3]
        name = rel.replace(os.sep, '.')
        out[name[:-len('.__init__')] if name.endswith('.__init__')
            else name] = os.path.join(dirpath, f)
  return out


def _imports(name: str, path: str, modules) -> set:
  """The package modules `name` imports anywhere in its file (function
  bodies included): `from a import b` counts a.b when b is a module."""
  tree = ast.parse(open(path).read())
  is_pkg = path.endswith('__init__.py')
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = name.split('.')[:len(name.split('.')) - node.level + is_pkg]
        base = '.'.join(parts + ([base] if base else []))
      for a in node.names:
        if f'{base}.{a.name}' in modules:
          out.add(f'{base}.{a.name}')
        elif base in modules:
          out.add(base)
  return out - {name}


def _graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycle(graph):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == 'open':
        return stack[stack.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    stack.pop()
    state[m] = 'done'
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  graph = _graph()
  assert len(graph) > 40 and 'mmd_jax.run.runner' in graph['mmd_jax.run.describe']
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))
  # The check finds a cycle when there is one.
  graph['mmd_jax.run.checks'] = graph['mmd_jax.run.checks'] | {'mmd_jax.run.runner'}
  assert _cycle(graph) is not None


def test_runner_evaluation_and_command_lines_name_no_method():
  names = [n for n in registry.names() if n != 'teacher']
  assert {'mm_alternating', 'mm_parameter', 'diff_instruct', 'emd',
          'vae'} <= set(names)
  for rel in RUNNER_SIDE + ('workdir/stage_meta.py', 'run/config_check.py',
                            'run/costs.py', 'run/describe.py',
                            'evaluation/evaluate.py', 'loop/train.py',
                            'numerics/denoiser.py', 'main.py', 'sample.py',
                            'bench.py'):
    src = open(os.path.join(PKG, rel)).read()
    for n in names:
      assert not re.search(rf'\b{n}\b', src), f'{rel} names {n!r}'
    # The teacher too: as a string the code compares with or looks up.
    strings = {node.value for node in ast.walk(ast.parse(src))
               if isinstance(node, ast.Constant)}
    assert 'teacher' not in strings, f"{rel} has the string 'teacher'"


# The runner and what it is made of: they name no method, no artifact and
# no method's config section.
RUNNER_SIDE = ('run/runner.py', 'run/plan.py', 'run/env.py', 'run/jobs.py',
               'run/artifacts.py', 'run/scoring.py', 'run/stage_dir.py')


def _names_a_method_section_or_artifact(src: str) -> list:
  """`config.teacher` (any `.teacher` attribute) and artifact names."""
  found = []
  for node in ast.walk(ast.parse(src)):
    if isinstance(node, ast.Attribute) and node.attr == 'teacher':
      found.append(f'.teacher at line {node.lineno}')
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        node.value.startswith(('teacher_', 'parent_')) or
        node.value == 'space'):
      found.append(f'{node.value!r} at line {node.lineno}')
  return found


def test_the_runner_names_no_method_section_and_no_artifact():
  for rel in RUNNER_SIDE:
    src = open(os.path.join(PKG, rel)).read()
    assert not _names_a_method_section_or_artifact(src), (
        rel, _names_a_method_section_or_artifact(src))
  # The check finds them.
  assert _names_a_method_section_or_artifact(
      'x = env.config.teacher.frozen_dtype')
  assert _names_a_method_section_or_artifact("a = arts['teacher_params']")
  assert _names_a_method_section_or_artifact("a = arts['parent_params']")
  assert _names_a_method_section_or_artifact("env.set_space(arts['space'])")


def _too_long(path: str, limit: int = 60) -> list:
  tree = ast.parse(open(path).read())
  return [(node.name, node.end_lineno - node.lineno + 1)
          for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_over_60_lines_and_no_module_over_400():
  long_functions, long_modules = [], []
  for name, path in _modules().items():
    long_functions += [(name, f, n) for f, n in _too_long(path)]
    lines = open(path).read().count('\n')
    if lines > 400:
      long_modules.append((name, lines))
  assert not long_functions, long_functions
  assert not long_modules, long_modules
  # The checks see long ones.
  import tempfile
  with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
    f.write('def f():\n' + '  x = 1\n' * 60)
  assert _too_long(f.name) == [('f', 61)]
  os.remove(f.name)


def test_the_package_top_level_holds_only_the_command_lines():
  top = sorted(f for f in os.listdir(PKG) if f.endswith('.py'))
  assert len(top) <= 8, top


def test_evaluation_imports_neither_the_loop_nor_a_method():
  graph = _graph()
  for m, deps in graph.items():
    if m.startswith('mmd_jax.evaluation'):
      bad = {d for d in deps if d in ('mmd_jax.loop.train', 'mmd_jax.run.runner',
                                      'mmd_jax.run.plan')
             or d.startswith(('mmd_jax.plugins', 'mmd_jax.methods'))}
      assert not bad, f'{m} imports {bad}'


def test_stage_keys_tell_anagrams_apart_and_are_stable():
  a = runner.stage_key(0, 'mm_alternating_k12')
  b = runner.stage_key(0, 'mm_alternating_k21')
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(
      runner.stage_key(0, 'mm_alternating_k12')))
  # crc32 of the name, folded into the seed's key.
  import zlib
  np.testing.assert_array_equal(np.asarray(a), np.asarray(jax.random.fold_in(
      jax.random.PRNGKey(0), zlib.crc32(b'mm_alternating_k12'))))
  assert not np.array_equal(np.asarray(runner.stage_key(1, 'teacher')),
                            np.asarray(runner.stage_key(0, 'teacher')))
