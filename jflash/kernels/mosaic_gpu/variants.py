"""The runtime operands of the variants, and the tiles a CTA streams (Mosaic GPU kernels).

Each kernel takes its own inputs, then the extra inputs :func:`inputs` builds for the
call's variants, in this order, each only when its variant is on:

* ``pos``: [B, 3] int32 (q_offset, query length, key length), read as scalars;
* ``q_seg``, ``kv_seg``: [B, Tp], [B, Sp] int32 segment ids (zero-padded to whole
  tiles), loaded from global memory straight into the register layout of the scores;
* ``count``, ``index``, ``full``: the CTAs' tile lists (:func:`jflash.schedule.tile_lists`
  with the CTA's rows as one block row), [B, R], [B, R, C], [B, R].

A CTA streams its tiles in one order that its producer and consumers share
(:class:`Schedule`): the positional range ``[cta.lo, cta.hi)``, or, with segment ids,
its tile list (full tiles first, then the masked ones).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash import masks, schedule
from jflash.backends import Operands
from jflash.kernels.mosaic_gpu import common
from jflash.masks import MaskSpec, Positions, TileRange

Index = Any
WGMMA = plgpu.Layout.WGMMA
NAMES = ("pos", "q_seg", "kv_seg", "count", "index", "full")


class Extras(NamedTuple):
  """The extra refs of a kernel (None where a variant is off)."""

  pos: Any = None
  q_seg: Any = None
  kv_seg: Any = None
  count: Any = None
  index: Any = None
  full: Any = None

  def positions(self, spec: MaskSpec, b) -> Positions:
    """The positional mask values of batch element `b` (static ints where possible)."""
    return spec.read_positions(self.pos, b)

  def segment_ids(self, ref_name: str, b, start, size: int, dim: int):
    """Segment ids [start, start + size) of batch `b`, laid out along `dim` of a score tile."""
    ref = getattr(self, ref_name)
    return plgpu.load(ref.at[b, pl.ds(start, size)], layout=WGMMA.reduce(1 - dim),
                      optimized=False)


def split(refs, names) -> tuple[Extras, tuple[Any, ...]]:
  """(Extras of the first len(names) refs, the refs after them)."""
  return Extras(**dict(zip(names, refs))), tuple(refs[len(names):])


def inputs(spec: MaskSpec, operands: Operands, *, batch: int, t_pad: int, s_pad: int,
           rows: int, cols: int, transpose: bool = False) -> tuple[list[Any], tuple[str, ...]]:
  """(arrays, names) of a kernel's extra inputs.

  `rows` x `cols` is the kernel's tiling of the score matrix: a CTA's query rows by
  the streamed key tiles (or, with `transpose`, a CTA's keys by the streamed query tiles).
  """
  arrays, names = [], []
  positions = spec.batch_positions(operands.q_offset, operands.q_lengths, operands.kv_lengths)
  if spec.dynamic_positions:
    arrays.append(spec.packed_positions(operands.q_offset, operands.q_lengths,
                                        operands.kv_lengths))
    names.append("pos")
  if spec.segment_ids:
    for ids, length in ((operands.q_segment_ids, t_pad), (operands.kv_segment_ids, s_pad)):
      arrays.append(jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, length - ids.shape[1]))))
    names += ["q_seg", "kv_seg"]
  if spec.uses_tile_lists:
    block_q, block_kv = (cols, rows) if transpose else (rows, cols)
    arrays += list(schedule.tile_lists(
        spec, block_q, block_kv, batch=batch, positions=positions,
        q_segment_ids=operands.q_segment_ids, kv_segment_ids=operands.kv_segment_ids,
        transpose=transpose))
    names += ["count", "index", "full"]
  return arrays, tuple(names)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The tiles that one CTA streams, as stream entries 0, 1, ..., ``count - 1``.

  Positional masks: tiles ``cta.lo + c``; each consumer computes the ones its own rows
  see (``mine``) and lets the others pass. Tile lists: the list of the CTA's block row
  `row`; every consumer computes every entry, the first ``full`` unmasked.
  """

  cta: TileRange | None = None
  ex: Extras | None = None
  b: Index = 0
  row: Index = 0

  @property
  def listed(self) -> bool:
    return self.cta is None

  @property
  def count(self) -> Index:
    if self.listed:
      return self.ex.count[self.b, self.row]
    return self.cta.hi - self.cta.lo

  def tile(self, c: Index) -> Index:
    """The tile index of stream entry c."""
    if self.listed:
      return self.ex.index[self.b, self.row, c]
    return self.cta.lo + c

  def consume(self, mine: TileRange | None, step: Callable[..., Any],
              skip: Callable[[Index, Any], Any], carry: Any, base: Index = 0,
              full: Callable[[Index, Index, Any], Any] | None = None) -> Any:
    """Consumer: ``carry = step(base + c, tile, carry, masked=...)`` on the entries it
    computes and ``carry = skip(base + c, carry)`` on the others, in stream order.

    `full`, if given, computes the unmasked entries instead: ``carry = full(c_lo, c_hi,
    carry)`` for the entries [c_lo, c_hi) (one contiguous run per consumer; it may be
    empty at run time). The forward's overlapped pipeline uses it.
    """
    if self.listed:
      run = lambda masked: lambda c, carry: step(base + c, self.tile(c), carry, masked=masked)
      n_full = self.ex.full[self.b, self.row]
      carry = (full(0, n_full, carry) if full is not None
               else common.fori(0, n_full, run(False), carry))
      return common.fori(n_full, self.count, run(True), carry)
    lo = self.cta.lo
    shifted = lambda c, carry: skip(base + c, carry)
    carry = common.fori(0, mine.lo - lo, shifted, carry)
    if full is None:
      carry = masks.fold_tiles(mine, lambda j, carry, masked: step(
          base + j - lo, j, carry, masked=masked), carry)
    else:
      masked = lambda j, carry: step(base + j - lo, j, carry, masked=True)
      carry = common.fori(mine.lo, mine.full_lo, masked, carry)
      carry = full(mine.full_lo - lo, mine.full_hi - lo, carry)
      carry = common.fori(mine.full_hi, mine.hi, masked, carry)
    return common.fori(mine.hi - lo, self.cta.hi - lo, shifted, carry)


def schedule_of(spec: MaskSpec, ex: Extras, pos: Positions, *, b, row, start: Index,
                rows: int, cols: int, transpose: bool = False) -> Schedule:
  """The Schedule of the CTA at block row `row` (first row `start`, `rows` rows)."""
  if spec.uses_tile_lists:
    return Schedule(ex=ex, b=b, row=row)
  tiles = spec.q_tiles if transpose else spec.kv_tiles
  return Schedule(cta=tiles(start, rows, cols, pos))


def own_tiles(spec: MaskSpec, sched: Schedule, pos: Positions, start: Index, rows: int,
              cols: int, transpose: bool = False) -> TileRange | None:
  """The tiles a consumer of `rows` rows from `start` computes (positional schedules)."""
  if sched.listed:
    return None
  tiles = spec.q_tiles if transpose else spec.kv_tiles
  return common.clamp_tiles(tiles(start, rows, cols, pos), sched.cta)


def visible(ex: Extras, spec: MaskSpec, pos: Positions, b, q_pos, kv_pos, own_seg,
            start: Index, q_dim: int, extents: tuple[int, int]):
  """What a masked tile shows: the positional mask and, with segment ids, equal ids only.

  The tile is [rows, cols] with queries along `q_dim`; `own_seg` are the segment ids of
  the CTA's own side (the other dim's, queries if q_dim == 0), the streamed side's are
  loaded here from `start`. `extents`: the kernel's padded (T, S); a static length
  that no index can pass is not compared (:meth:`MaskSpec.visible`). At H=64, where
  the softmax bounds a step, the two compares dropped from plain causal tiles made the
  T=2k causal forward 5% faster (H200; BUILD_NOTES, issue 10 session 8).
  """
  vis = spec.visible(q_pos, kv_pos, pos, extents)
  if not spec.segment_ids:
    return vis
  shape = q_pos.shape  # own side along dim 0, the streamed side along dim 1
  streamed = ex.segment_ids("kv_seg" if q_dim == 0 else "q_seg", b, start, shape[1], 1)
  return vis & (lax.broadcast_in_dim(own_seg, shape, [0])
                == lax.broadcast_in_dim(streamed, shape, [1]))
