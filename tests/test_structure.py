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
  for rel in ('run/runner.py', 'run/plan.py', 'workdir/stage_meta.py',
              'run/config_check.py', 'evaluation/evaluate.py', 'sample.py',
              'bench.py', 'run/describe.py'):
    src = open(os.path.join(PKG, rel)).read()
    for n in names:
      assert not re.search(rf'\b{n}\b', src), f'{rel} names {n!r}'
    # The teacher too: as a string the code compares with or looks up.
    strings = {node.value for node in ast.walk(ast.parse(src))
               if isinstance(node, ast.Constant)}
    assert 'teacher' not in strings, f"{rel} has the string 'teacher'"


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
