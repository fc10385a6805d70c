"""Collective accounting from a compiled program's HLO text.

`count(compiled.as_text())` returns, for all-reduce, reduce-scatter,
all-gather and all-to-all, how many the program holds and how many bytes
their results carry, split between instructions inside a loop body (a
`while` body or anything it calls, which run once per trip) and the rest
(once per step). This is what `--mode=describe` and `bench` report, and
what the tests use to prove that a step reduces its gradients once.

Async pairs (`all-reduce-start` / `-done`) count once, at the start. Bytes
are the sizes of the result arrays; for an async start, whose result also
holds its operands, the last array of the tuple.
"""
from __future__ import annotations

import re

KINDS = ('all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all')

_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2,
          'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
          'f64': 8, 'c64': 8, 'c128': 16, 'f8e4m3fn': 1, 'f8e5m2': 1}
_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+'
                    r'([a-z][a-z0-9\-]*)\(')
_ARRAY = re.compile(r'\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]')
_CALLS = re.compile(r'(?:body|condition|calls|to_apply|'
                    r'branch_computations|called_computations)='
                    r'(\{[^}]*\}|%?[\w.\-]+)')


def _array_bytes(shape_text: str) -> list[int]:
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype not in _BYTES:
      continue
    n = 1
    for d in dims.split(','):
      if d:
        n *= int(d)
    out.append(n * _BYTES[dtype])
  return out


def _computations(hlo: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      name = m.group(1)
      comps[name] = []
    elif name is not None:
      if line.strip() == '}':
        name = None
      else:
        comps[name].append(line)
  return comps


def _callees(line: str) -> list[str]:
  out = []
  for group in _CALLS.findall(line):
    out += [c.strip().lstrip('%') for c in group.strip('{}').split(',')
            if c.strip()]
  return out


def _in_loop(comps: dict[str, list[str]]) -> set[str]:
  """Every computation that a while body (or condition) reaches."""
  roots = set()
  for lines in comps.values():
    for line in lines:
      m = _INSTR.match(line)
      if m and m.group(2) == 'while':
        roots.update(_callees(line))
  seen, todo = set(), list(roots)
  while todo:
    c = todo.pop()
    if c in seen or c not in comps:
      continue
    seen.add(c)
    for line in comps[c]:
      todo += _callees(line)
  return seen


def count(hlo: str) -> dict:
  """{'in_loop': {kind: {'count', 'bytes'}}, 'outside_loop': {...}}."""
  comps = _computations(hlo)
  looped = _in_loop(comps)
  out = {where: {k: {'count': 0, 'bytes': 0} for k in KINDS}
         for where in ('in_loop', 'outside_loop')}
  for name, lines in comps.items():
    where = out['in_loop' if name in looped else 'outside_loop']
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      op = m.group(2)
      kind = op[:-len('-start')] if op.endswith('-start') else op
      if kind not in KINDS:
        continue
      sizes = _array_bytes(m.group(1))
      where[kind]['count'] += 1
      where[kind]['bytes'] += (sizes[-1] if op.endswith('-start') and sizes
                               else sum(sizes))
  return out


def reductions_in_loops(counts: dict) -> int:
  """All-reduces and reduce-scatters that run once per loop trip."""
  return sum(counts['in_loop'][k]['count']
             for k in ('all-reduce', 'reduce-scatter'))


def total(counts: dict, kind: str) -> int:
  return sum(counts[w][kind]['count'] for w in counts)


def format_counts(counts: dict) -> str:
  parts = []
  for where in ('outside_loop', 'in_loop'):
    items = [f"{k} {v['count']}x {v['bytes'] / 2**20:.2f} MiB"
             for k, v in counts[where].items() if v['count']]
    parts.append(f"{where.replace('_', ' ')}: " + (', '.join(items)
                                                  or 'none'))
  return '; '.join(parts)
