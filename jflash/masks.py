"""Which (query, key) pairs attend, and which tiles of the score matrix to visit.

Every backend walks the T x S score matrix in tiles. :class:`MaskSpec` is the static
part of the mask (causality, a window, which runtime mask operands exist); the runtime
part (per-batch ``q_offset`` and lengths, segment ids) arrives as arrays.

Positional masks (causal, window, offset, lengths) give, for one block row of tiles, a
:class:`TileRange` of three contiguous runs (:meth:`MaskSpec.kv_tiles`, and
:meth:`MaskSpec.q_tiles` for a block column)::

    [lo, full_lo)       straddle the mask edge: computed, then masked
    [full_lo, full_hi)  fully visible: computed, never masked
    [full_hi, hi)       straddle the mask edge: computed, then masked

Tiles outside [lo, hi) are entirely masked and never computed. Query i sits at position
``i + q_offset`` and key j at position j; with ``is_causal`` query i sees keys
``j <= i + q_offset`` (``q_offset = 0`` is jax.nn's top-left alignment), and a window
``(left, right)`` keeps ``i + q_offset - left <= j <= i + q_offset + right``. For T=4,
S=6 (``x`` visible)::

    is_causal           is_causal, q_offset=2     window (1, 1)
    x . . . . .         x x x . . .               x x . . . .
    x x . . . .         x x x x . .               x x x . . .
    x x x . . .         x x x x x .               . x x x . .
    x x x x . .         x x x x x x               . . x x x .

Segment ids (packing), dense masks and static block-sparse mask objects are not
positional: :mod:`jflash.schedule` classifies every tile (skip, masked, full) and
compacts, per block row, the list of tiles to visit. The mask objects (:class:`Causal`,
:class:`LocalWindow`, :class:`ChunkedCausal`, :class:`Strided`, :class:`GlobalTokens`,
:class:`BlockLayout`, composed with ``&`` and ``|``; defined in :mod:`jflash.sparsity`)
are classified on the host at trace time; when nothing else is runtime data, the whole
list is a trace-time constant.

The range functions work on Python ints and on traced int32 scalars alike, so the
Pallas kernels and the pure-JAX backend share them.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from jflash import block_info, sparsity
# The mask objects, re-exported: users write jflash.masks.Causal() & jflash.masks.LocalWindow(...)
from jflash.sparsity import (And, BlockLayout, Causal, ChunkedCausal, GlobalTokens,  # noqa: F401
                             LocalWindow, Mask, Or, Strided)

Index = Any  # a Python int or a traced int32 scalar

SKIP, MASKED, FULL = sparsity.SKIP, sparsity.MASKED, sparsity.FULL  # tile classes


class TileRange(NamedTuple):
  """Tiles [lo, hi) to visit; [full_lo, full_hi) need no mask (lo<=full_lo<=full_hi<=hi)."""

  lo: Index
  full_lo: Index
  full_hi: Index
  hi: Index


class Positions(NamedTuple):
  """The positional mask values of one batch element (Python ints when static)."""

  offset: Index  # q_offset: query i sits at position i + offset
  q_len: Index   # queries at index >= q_len are padding (<= T)
  kv_len: Index  # keys at index >= kv_len are padding (<= S)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """The static description of a call's mask.

  Attributes:
    q_len: T, the number of queries.
    kv_len: S, the number of keys and values.
    is_causal: query i sees key j only if j <= i + q_offset.
    window: None, or (left, right), each a non-negative int or None (unbounded):
      query i sees key j only if i + q_offset - left <= j <= i + q_offset + right.
    q_offset: the static query offset (used when `dynamic_offset` is False).
    dynamic_offset: q_offset is a runtime int32 [B] operand.
    q_lengths, kv_lengths: runtime int32 [B] valid lengths are given.
    segment_ids: runtime segment ids are given (a query sees keys of its segment only).
    dense_mask: a runtime boolean mask [B or 1, N or 1, T, S] is given.
    mask_object: None, or a static block-sparse :class:`Mask` (on indices i, j; it does
      not see q_offset).
  """

  q_len: int
  kv_len: int
  is_causal: bool = False
  window: tuple[int | None, int | None] | None = None
  q_offset: int = 0
  dynamic_offset: bool = False
  q_lengths: bool = False
  kv_lengths: bool = False
  segment_ids: bool = False
  dense_mask: bool = False
  mask_object: Mask | None = None

  @property
  def left(self):
    return None if self.window is None else self.window[0]

  @property
  def right(self):
    right = None if self.window is None else self.window[1]
    if self.is_causal:
      right = 0 if right is None else min(right, 0)
    return right

  @property
  def dynamic_positions(self) -> bool:
    """Whether the positional mask depends on runtime operands."""
    return self.dynamic_offset or self.q_lengths or self.kv_lengths

  @property
  def uses_tile_lists(self) -> bool:
    """Whether the kernels iterate per-row tile lists (:func:`jflash.schedule.tile_lists`)."""
    return self.segment_ids or self.dense_mask or self.mask_object is not None

  @property
  def static_tiles(self) -> bool:
    """Whether the tile schedule is known at trace time (no runtime operand shapes it)."""
    return not (self.dynamic_positions or self.segment_ids or self.dense_mask)

  def object_tiles(self, block_q: int, block_kv: int, transpose: bool = False):
    """(block_ids, blocks) of `mask_object` on this tiling (`jflash.block_info.block_info`).

    With `transpose`, [nkv, nq] ids and [U, block_kv, block_q] int8 patterns, else
    [nq, nkv] and [U, block_q, block_kv].
    """
    info = block_info.block_info(self.mask_object, self.q_len, self.kv_len, block_q, block_kv)
    if transpose:
      info = block_info.transposed(info)
    return info.block_ids, info.blocks.astype(np.int8)

  def positions(self, offset=None, q_len=None, kv_len=None) -> Positions:
    """Positions of one batch element: the given runtime scalars, else the static values."""
    return Positions(self.q_offset if offset is None else offset,
                     self.q_len if q_len is None else q_len,
                     self.kv_len if kv_len is None else kv_len)

  def batch_positions(self, q_offset=None, q_lengths=None, kv_lengths=None) -> Positions:
    """Per-batch Positions from the runtime [B] int32 operands (None: the static value).

    Lengths are clipped to [0, T] and [0, S]: the same mask, and the tile arithmetic
    holds.
    """
    return Positions(
        self.q_offset if q_offset is None else q_offset,
        self.q_len if q_lengths is None else jnp.clip(q_lengths, 0, self.q_len),
        self.kv_len if kv_lengths is None else jnp.clip(kv_lengths, 0, self.kv_len))

  def packed_positions(self, q_offset=None, q_lengths=None, kv_lengths=None):
    """[B, 3] int32 (q_offset, query length, key length) from the runtime [B] operands,
    static values broadcast: the kernels' operand read by :meth:`read_positions`."""
    positions = self.batch_positions(q_offset, q_lengths, kv_lengths)
    b = next(x.shape[0] for x in positions if not isinstance(x, int))
    return jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.int32), (b,)) for x in positions],
                     axis=1)

  def read_positions(self, packed, b) -> Positions:
    """The Positions of batch element `b`: runtime values read from `packed` (a [B, 3]
    array or kernel ref from :meth:`packed_positions`, or None), static ones otherwise."""
    if packed is None:
      return self.positions()
    return self.positions(offset=packed[b, 0] if self.dynamic_offset else None,
                          q_len=packed[b, 1] if self.q_lengths else None,
                          kv_len=packed[b, 2] if self.kv_lengths else None)

  def visible(self, q_pos, kv_pos, pos: Positions | None = None,
              extents: tuple[int, int] | None = None):
    """Boolean array: query index `q_pos` sees key index `kv_pos` (broadcasting).

    Indices past the (valid) end of either sequence are never visible. Segment ids
    are not checked here (see :func:`segment_visible`). `extents`: the (T, S) extents
    that q_pos and kv_pos index (padded to whole tiles); a static length at least that
    large is not compared (a kernel's masked tiles then cost fewer operations).
    """
    pos = pos or self.positions()
    conds = []
    for index, length, extent in zip((q_pos, kv_pos), (pos.q_len, pos.kv_len),
                                     extents or (None, None)):
      if not (extent is not None and isinstance(length, int) and length >= extent):
        conds.append(index < length)
    if self.left is not None or self.right is not None:
      at = _add(q_pos, pos.offset)  # the query's position
      if self.right is not None:
        conds.append(kv_pos <= _add(at, self.right))
      if self.left is not None:
        conds.append(kv_pos >= _add(at, -self.left))
    if not conds:  # every index is within its extent and no window applies
      return (q_pos >= 0) & (kv_pos >= 0)
    vis = functools.reduce(operator.and_, conds)
    # The shape every compare would give (lengths and offsets may be batched arrays).
    return jnp.broadcast_to(vis, np.broadcast_shapes(jnp.shape(vis), jnp.shape(q_pos),
                                                     jnp.shape(kv_pos)))

  def kv_tiles(self, q_start: Index, block_q: int, block_kv: int,
               pos: Positions | None = None) -> TileRange:
    """Key tiles that the query tile [q_start, q_start + block_q) must visit.

    A tile is "full" when every entry is visible to every valid query row; rows past
    the valid length are padding whose results the kernels discard (out 0, lse -inf),
    so they do not make a tile masked.
    """
    pos = pos or self.positions()
    o = pos.offset
    q_last = _min(q_start + block_q, pos.q_len) - 1
    hi, full_hi = _cdiv(pos.kv_len, block_kv), _div(pos.kv_len, block_kv)
    lo = full_lo = 0
    if self.right is not None and _static(o, pos.q_len) and o >= 0:
      # The plain causal case: every argument is >= 0 (q_last >= 0 as T >= 1). The
      # unclamped form matters: with the clamps ptxas allocated the forward kernel 150
      # registers instead of 158 and it ran 4% slower at T=2k on an H200 (BUILD_NOTES).
      hi = _min(hi, _div(_add(q_last, o, self.right), block_kv, nonneg=True) + 1)
      full_hi = _min(full_hi, _div(_add(q_start, o, self.right, 1), block_kv, nonneg=True))
    elif self.right is not None:
      hi = _min(hi, _cdiv(_add(q_last, o, self.right, 1), block_kv))
      full_hi = _min(full_hi, _div(_add(q_start, o, self.right, 1), block_kv))
    if self.left is not None:
      lo = _div(q_start + o - self.left, block_kv)
      full_lo = _cdiv(q_last + o - self.left, block_kv)
      hi = _where(q_start + o - self.left < pos.kv_len, hi, 0)  # window past the keys
    if not _static(pos.q_len) or pos.q_len < self.q_len:
      hi = _where(q_start < pos.q_len, hi, 0)  # the whole tile is padding
    return ordered(lo, full_lo, full_hi, hi)

  def q_tiles(self, kv_start: Index, block_kv: int, block_q: int,
              pos: Positions | None = None) -> TileRange:
    """Query tiles that see the key tile [kv_start, kv_start + block_kv).

    A tile is "full" when every entry is visible for every valid key column; columns
    past S are padding whose gradients are dropped, but columns in [kv_len, S) are real
    and must get zero gradients, so a tile that holds any of them is masked. Query rows
    past the valid length need no mask: the backward pass gives them lse = +inf, so
    their probabilities are exactly 0.
    """
    pos = pos or self.positions()
    o = pos.offset
    kv_last = _min(kv_start + block_kv, pos.kv_len) - 1
    hi, full_hi = _cdiv(pos.q_len, block_q), self.q_len // block_q
    lo = full_lo = 0
    if self.right is not None:
      lo = _div(kv_start - o - self.right, block_q)
      full_lo = _cdiv(kv_last - o - self.right, block_q)
      hi = _where(kv_start - o - self.right < pos.q_len, hi, 0)  # no query reaches it
    if self.left is not None:
      hi = _min(hi, _cdiv(kv_last - o + self.left + 1, block_q))
      full_hi = _min(full_hi, _div(kv_start - o + self.left + 1, block_q))
    if not _static(pos.kv_len) or pos.kv_len < self.kv_len:
      hi = _where(kv_start < pos.kv_len, hi, 0)  # the whole tile is padding
      full_hi = _where(_min(kv_start + block_kv, self.kv_len) <= pos.kv_len, full_hi, 0)
    return ordered(lo, full_lo, full_hi, hi)


def segment_visible(q_segment_ids, kv_segment_ids):
  """[bq, 1] == [1, bkv]: a query sees only keys of its own segment."""
  return q_segment_ids[:, None] == kv_segment_ids[None, :]


def fold_tiles(tiles: TileRange, body: Callable[..., Any], carry: Any) -> Any:
  """Runs ``carry = body(j, carry, masked=...)`` over the tiles of `tiles`, in order.

  `masked` is a static bool: True for tiles that straddle the mask edge.
  Runs whose bounds are equal Python ints are dropped at trace time.
  """
  runs = ((tiles.lo, tiles.full_lo, True), (tiles.full_lo, tiles.full_hi, False),
          (tiles.full_hi, tiles.hi, True))
  for start, stop, masked in runs:
    if isinstance(start, int) and isinstance(stop, int) and start >= stop:
      continue
    carry = lax.fori_loop(start, stop, functools.partial(_drop_kw, body, masked), carry)
  return carry


def _drop_kw(body, masked, j, carry):
  return body(j, carry, masked=masked)


def ordered(lo, full_lo, full_hi, hi) -> TileRange:
  """The TileRange of these bounds, clamped so that lo <= full_lo <= full_hi <= hi."""
  lo = _min(lo, hi)  # lo, hi >= 0 by construction
  full_lo = _max(_min(full_lo, hi), lo)
  full_hi = _max(_min(full_hi, hi), full_lo)
  return TileRange(lo, full_lo, full_hi, hi)


def _add(x, *terms):
  """x + sum(terms), skipping static zeros (so the plain kernels trace no `+ 0`)."""
  static = sum(t for t in terms if isinstance(t, int))
  for t in terms:
    if not isinstance(t, int):
      x = x + t
  return x if static == 0 else x + static


def _static(*xs) -> bool:
  return all(isinstance(x, int) for x in xs)


def _div(a: Index, b: int, nonneg: bool = False) -> Index:
  """floor(max(a, 0) / b): every caller clamps its result to [0, tiles] anyway.

  `nonneg`: the caller knows a >= 0, and the clamp is left out of the kernel.
  """
  if _static(a):
    return max(a, 0) // b
  return lax.div(a if nonneg else _max(a, 0), jnp.asarray(b, a.dtype))


def _cdiv(a: Index, b: int) -> Index:
  return _div(a + b - 1, b)


def _min(a: Index, b: Index) -> Index:
  return min(a, b) if _static(a, b) else jnp.minimum(a, b)


def _where(cond, a: Index, b: Index) -> Index:
  if isinstance(cond, bool):
    return a if cond else b
  # Typed int32 operands: the Triton lowering gives weakly typed literals the wrong type.
  return jnp.where(cond, jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32))


def _max(a: Index, b: Index) -> Index:
  return max(a, b) if _static(a, b) else jnp.maximum(a, b)
