"""The runtime operands of the variants, as Triton kernel inputs (shared by all kernels).

Each kernel takes q, k, v (and its own inputs), then the extra inputs this module builds
for the call's variants, in this order, each only when its variant is on:

* ``pos``: [B, 3] int32 (q_offset, query length, key length), read as scalars;
* ``q_seg``, ``kv_seg``: [B, T], [B, S] int32 segment ids, tiled by the kernel;
* ``count``, ``index``, ``full``: the kernel's tile lists (:func:`jflash.schedule.tile_lists`),
  [B, R], [B, R, C], [B, R];
* ``slopes``: [B, N] float32 ALiBi slopes, read as scalars;
* ``bias``, ``mask``: [B or 1, N or 1, T, S] additive bias and int8 mask, tiled by the
  kernel like its score tiles (the backward's dK/dV kernel reads them transposed);
* ``seeds``: [B, N] uint32 dropout seeds, read as scalars;
* ``obj_ids``, ``obj_blocks``: a mask object's pattern id per tile [R, C] and its
  distinct int8 patterns [U, rows, cols] (trace-time constants; transposed for dK/dV).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jax.experimental import pallas as pl

from jflash import masks, schedule
from jflash.kernels.triton import common
from jflash.backends import Operands
from jflash.masks import MaskSpec, Positions
from jflash.scores import ScoreMod


class Extras(NamedTuple):
  """The extra refs of a kernel (None where a variant is off)."""

  pos: Any = None
  q_seg: Any = None
  kv_seg: Any = None
  count: Any = None
  index: Any = None
  full: Any = None
  slopes: Any = None
  bias: Any = None
  mask: Any = None
  obj_ids: Any = None
  obj_blocks: Any = None
  seeds: Any = None

  def object_tile(self, r, c):
    """The mask object's [rows, cols] int8 pattern of tile (r, c) of the kernel's lists."""
    return common.load(self.obj_blocks.at[self.obj_ids[r, c]])

  def positions(self, spec: MaskSpec, b) -> Positions:
    """The positional mask values of batch element `b` (static ints where possible)."""
    return spec.read_positions(self.pos, b)


def _whole(x):
  return pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


def inputs(spec: MaskSpec, score_mod: ScoreMod, operands: Operands, *, batch: int,
           block_q: int, block_kv: int, q_seg_spec, kv_seg_spec, scores_spec,
           transpose: bool = False):
  """(arrays, block specs, names) of a kernel's extra inputs.

  `q_seg_spec` / `kv_seg_spec` are the BlockSpecs the kernel reads segment ids with,
  `scores_spec(x)` the BlockSpec it reads a [B or 1, N or 1, T, S] bias or mask `x`
  with; `block_q`, `block_kv`, `transpose` shape its tile lists.
  """
  arrays, specs, names = [], [], []

  def add(name, x, block_spec=None):
    arrays.append(x)
    specs.append(block_spec or _whole(x))
    names.append(name)

  positions = spec.batch_positions(operands.q_offset, operands.q_lengths, operands.kv_lengths)
  if spec.dynamic_positions:
    add("pos", spec.packed_positions(operands.q_offset, operands.q_lengths, operands.kv_lengths))
  if spec.segment_ids:
    add("q_seg", operands.q_segment_ids, q_seg_spec)
    add("kv_seg", operands.kv_segment_ids, kv_seg_spec)
  if spec.uses_tile_lists:
    lists = schedule.tile_lists(spec, block_q, block_kv, batch=batch, positions=positions,
                             q_segment_ids=operands.q_segment_ids,
                             kv_segment_ids=operands.kv_segment_ids, mask=operands.mask,
                             transpose=transpose)
    for name, x in zip(("count", "index", "full"), lists):
      add(name, x)
  if score_mod.alibi:
    add("slopes", operands.alibi_slopes)
  if score_mod.bias:
    add("bias", operands.bias, scores_spec(operands.bias))
  if spec.dense_mask:
    add("mask", operands.mask, scores_spec(operands.mask))
  if score_mod.dropout_rate:
    add("seeds", operands.dropout_seeds)
  if spec.mask_object is not None:
    ids, blocks = spec.object_tiles(block_q, block_kv, transpose=transpose)
    add("obj_ids", schedule.constant(ids))
    add("obj_blocks", schedule.constant(blocks))
  return arrays, specs, tuple(names)


def visible(ex: Extras, spec: MaskSpec, pos: Positions, *, i, j, q_pos, kv_pos, kv_slice,
            q_seg, kv_in, q_rows, kv_cols):
  """[block_q, block_kv] bool: what query tile `i` sees of key tile `j` (a masked tile).

  Every mask of the call: positional (`spec.visible`), segment ids (`q_seg`, this query
  tile's ids, None without), the dense mask's tile, the mask object's pattern.
  """
  vis = spec.visible(q_pos[:, None], kv_pos[None, :], pos)
  if q_seg is not None:
    kv_seg = common.load(ex.kv_seg.at[kv_slice], kv_in, other=-2)
    vis = vis & masks.segment_visible(q_seg, kv_seg)
  if spec.dense_mask:
    vis = vis & (score_tile(ex.mask.at[:, kv_slice], q_rows, kv_cols) != 0)
  if spec.mask_object is not None:
    vis = vis & (ex.object_tile(i, j) != 0)
  return vis


def query_tile_inputs(spec: MaskSpec, score_mod: ScoreMod, operands: Operands, *, batch: int,
                      block_q: int, block_kv: int, q_block):
  """`inputs` of a kernel with one program per (query tile, batch, query head), whose
  query tile index map is `q_block` (the forward and dQ kernels).

  Returns (arrays, block specs, names, scores_spec), scores_spec(x) being the BlockSpec
  of the query tile's rows [block_q, S] of a [B or 1, N or 1, T, S] array x.
  """
  s_len = spec.kv_len

  def scores_spec(x):
    return pl.BlockSpec((None, None, block_q, s_len), lambda i, bi, ni: (
        *scores_index(x, bi, ni), q_block(i, bi, ni)[1], 0))

  arrays, specs, names = inputs(
      spec, score_mod, operands, batch=batch, block_q=block_q, block_kv=block_kv,
      q_seg_spec=pl.BlockSpec((None, block_q), lambda i, bi, ni: q_block(i, bi, ni)[:2]),
      kv_seg_spec=pl.BlockSpec((None, s_len), lambda i, bi, ni: (bi, 0)),
      scores_spec=scores_spec)
  return arrays, specs, names, scores_spec


def scores_index(x, b, head):
  """The (batch, head) block index of a [B or 1, N or 1, T, S] operand: 0 on broadcast axes."""
  return (b if x.shape[0] > 1 else 0), (head if x.shape[1] > 1 else 0)


def score_tile(ref, rows, cols, *, transpose: bool = False, other=0):
  """A [rows, cols] tile of a bias or mask block (transposed for the dK/dV kernel)."""
  x = common.load(ref, rows, cols, other=other)
  return x.T if transpose else x


def unpack(refs, names) -> Extras:
  return Extras(**dict(zip(names, refs)))
