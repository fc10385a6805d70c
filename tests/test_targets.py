"""Collective accounting from HLO text, and the paper estimate's arithmetic
against hand-computed values."""
import pytest

from mmd_jax.device import collectives, targets

HLO = '''HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ar = f32[8]{0} all-reduce(%x), replica_groups={{0,1}}, to_apply=%add
  %f = f32[8]{0} fusion(%ar), kind=kLoop, calls=%inner
  ROOT %t = (s32[], f32[8]) tuple(%i, %f)
}

%inner (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  ROOT %ag = f32[8]{0} all-gather(%a), dimensions={0}
}

%cond (p: (s32[], f32[8])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[16,4], y: bf16[4]) -> f32[8] {
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  %rs = f32[4,4]{1,0} reduce-scatter(%x), dimensions={0}, to_apply=%add
  %s = ((bf16[4]), bf16[8]) all-gather-start(%y), dimensions={0}
  %d = bf16[8] all-gather-done(%s)
  ROOT %o = f32[8] get-tuple-element(%w), index=1
}
'''


def test_collectives_are_split_by_loop_and_sized():
  c = collectives.count(HLO)
  assert c['in_loop']['all-reduce'] == {'count': 1, 'bytes': 32}
  # Called from the loop body through a fusion: still once per trip.
  assert c['in_loop']['all-gather'] == {'count': 1, 'bytes': 32}
  assert c['outside_loop']['reduce-scatter'] == {'count': 1, 'bytes': 64}
  # An async pair counts once, with the result's bytes (not the operand's).
  assert c['outside_loop']['all-gather'] == {'count': 1, 'bytes': 16}
  assert c['outside_loop']['all-reduce']['count'] == 0
  assert collectives.reductions_in_loops(c) == 1
  assert collectives.total(c, 'all-gather') == 2
  assert 'in loop: all-reduce 1x' in collectives.format_counts(c)


def test_the_estimate_is_the_ring_arithmetic():
  t = targets.Target('t', 8, 1e12, 10e9, 1e9, {'data': 2, 'fsdp': 4})
  e = targets.estimate(t, flops_per_step=8e12, trained_bytes=4e8,
                       state_bytes=16e8, gathered_bytes=6e8,
                       activation_bytes_per_row=1e6, global_batch=64,
                       micro_batches=2, steps=86400)
  assert e['flops_bound_s'] == pytest.approx(1.0)
  comm = 0.75 * 4e8 + 2 * 0.5 * 1e8 + 0.75 * 6e8
  assert e['comm_bytes_per_chip'] == pytest.approx(comm)
  assert e['comm_bound_s'] == pytest.approx(comm / 1e9)
  assert e['dominant'] == 'compute' and e['per_chip_batch'] == 4
  assert e['memory_per_chip_bytes'] == pytest.approx(
      4e8 + 6e8 + 4e8 + 4 * 1e6)
  assert e['fits'] and e['days_at_bound'] == pytest.approx(1.0)
  assert e['grad_accum_factor_to_fit'] == 1
  # 4 GB of activations per row, 1.4 GB fixed: 4 rows do not fit in 10 GB,
  # 2 do.
  e = targets.estimate(t, flops_per_step=1, trained_bytes=4e8,
                       state_bytes=16e8, gathered_bytes=6e8,
                       activation_bytes_per_row=4e9, global_batch=64,
                       micro_batches=2, steps=1)
  assert not e['fits'] and e['grad_accum_factor_to_fit'] == 2
  with pytest.raises(Exception, match='unknown'):
    targets.get('tpu_v9')
