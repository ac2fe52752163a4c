"""The tile schedule of calls whose tiles are classified at runtime or from a mask object.

Positional masks give each block row a :class:`jflash.masks.TileRange`. Segment ids, a
dense mask and static mask objects instead classify every (query tile, key tile) pair as
SKIP, MASKED or FULL (:func:`tile_classes`) and compact, per block row, the tiles to
visit, full ones first (:func:`tile_lists`, :func:`compact`); the kernels iterate them
with :func:`fold_tile_list`. When nothing is runtime data the lists are trace-time
constants (:func:`constant`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jflash import block_info
from jflash.masks import FULL, MASKED, SKIP, Index, MaskSpec, Positions, _cdiv


class TileList(NamedTuple):
  """Per block row, the tiles to visit, compacted (see :func:`tile_lists`).

  count: [B, R] int32, how many tiles row r visits.
  index: [B, R, C] int32, their column indices: first the `full` tiles that need no mask,
    then the masked ones (each group in increasing order), then junk.
  full: [B, R] int32, how many of them need no mask.
  """

  count: jax.Array
  index: jax.Array
  full: jax.Array


def tile_lists(spec: MaskSpec, block_q: int, block_kv: int, *, batch: int,
               positions: Positions, q_segment_ids=None, kv_segment_ids=None, mask=None,
               transpose: bool = False) -> TileList:
  """The tile schedule of a call with runtime tile classes, computed on device (plain XLA).

  Every (query tile, key tile) pair is classified (:func:`tile_classes`), and each
  block row's non-skipped tiles are compacted into a list (:func:`compact`), so a
  kernel visits ``count`` tiles without testing the others.

  Args:
    spec: the mask.
    block_q, block_kv: the tile sizes of the kernel that iterates the lists.
    batch: B.
    positions: per-batch [B] int32 arrays (or Python ints) of offsets and lengths.
    q_segment_ids, kv_segment_ids: None, or [B, T], [B, S] int32.
    mask: None, or a dense boolean (or int8, nonzero = visible) mask [B or 1, N or 1, T, S].
    transpose: lists per key tile of the query tiles that see it (for dK/dV) instead
      of per query tile of its key tiles.

  Returns:
    A :class:`TileList` with R = query tiles and C = key tiles (swapped if transpose).
  """
  if spec.static_tiles:  # a trace-time constant, the same for every batch element
    lists = compact(_static_classes(spec, block_q, block_kv, transpose), xp=np)
    return TileList(*(constant(np.broadcast_to(x, (batch, *x.shape))) for x in lists))
  return compact(tile_classes(spec, block_q, block_kv, batch=batch, positions=positions,
                              q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                              mask=mask, transpose=transpose))


def constant(x: np.ndarray) -> jax.Array:
  """A trace-time NumPy array as a device array inside the kernels' traced functions.

  Through a nested `jit`: `custom_partitioning` (jflash.partitioning) refuses functions
  that close over array constants, and a nested jit keeps the constant in its own jaxpr.
  """
  return jax.jit(lambda: jnp.asarray(x))()


def _static_classes(spec: MaskSpec, block_q: int, block_kv: int,
                    transpose: bool) -> np.ndarray:
  """[R, C] tile classes of a spec whose schedule is static (NumPy, at trace time).

  R = query tiles, C = key tiles, swapped with `transpose` (whose positional classes are
  those of :meth:`MaskSpec.q_tiles`, as in :func:`tile_classes`).
  """
  nq, nkv = _cdiv(spec.q_len, block_q), _cdiv(spec.kv_len, block_kv)
  rows, cols = (nkv, nq) if transpose else (nq, nkv)
  c = np.arange(cols)
  kind = np.empty((rows, cols), np.int32)
  for r in range(rows):
    if transpose:
      lo, full_lo, full_hi, hi = spec.q_tiles(r * block_kv, block_kv, block_q)
    else:
      lo, full_lo, full_hi, hi = spec.kv_tiles(r * block_q, block_q, block_kv)
    kind[r] = np.where((c >= lo) & (c < hi),
                       np.where((c >= full_lo) & (c < full_hi), FULL, MASKED), SKIP)
  if spec.mask_object is not None:
    info = block_info.block_info(spec.mask_object, spec.q_len, spec.kv_len, block_q, block_kv)
    kind = np.minimum(kind, info.kind.T if transpose else info.kind)
  return kind


def tile_classes(spec: MaskSpec, block_q: int, block_kv: int, *, batch: int,
                 positions: Positions, q_segment_ids=None, kv_segment_ids=None, mask=None,
                 transpose: bool = False):
  """[B, R, C] int32 class of every tile: SKIP, MASKED or FULL (see :func:`tile_lists`).

  The minimum of what each mask says: the positional mask (SKIP when it hides the tile,
  FULL when it sees all of it); segment ids (SKIP when the id ranges of the tile's rows
  and columns do not overlap, FULL when they all hold one and the same id); a dense mask
  (SKIP when it is False on the whole tile for every head, FULL when True on all of it
  for every head).
  """
  nq, nkv = _cdiv(spec.q_len, block_q), _cdiv(spec.kv_len, block_kv)
  pos = Positions(*(jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch,)) for x in positions))

  def classes(ranges, n):  # TileRange of [B, R] arrays -> [B, R, n] classes
    j = jnp.arange(n)[None, None, :]
    lo, full_lo, full_hi, hi = (x[..., None] for x in ranges)
    visit = (j >= lo) & (j < hi)
    return jnp.where(visit, jnp.where((j >= full_lo) & (j < full_hi), FULL, MASKED), SKIP)

  def per_batch(fn, starts):  # fn(start, pos) -> TileRange, for every batch and start
    return jax.vmap(lambda p: jax.vmap(lambda s: fn(s, p))(starts))(pos)

  if transpose:
    ranges = per_batch(lambda s, p: spec.q_tiles(s, block_kv, block_q, Positions(*p)),
                       jnp.arange(nkv, dtype=jnp.int32) * block_kv)
    kind = classes(ranges, nq).swapaxes(1, 2)  # [B, nq, nkv]
  else:
    ranges = per_batch(lambda s, p: spec.kv_tiles(s, block_q, block_kv, Positions(*p)),
                       jnp.arange(nq, dtype=jnp.int32) * block_q)
    kind = classes(ranges, nkv)
  if q_segment_ids is not None:
    q_lo, q_hi = _tile_min_max(q_segment_ids, block_q)  # [B, nq]
    k_lo, k_hi = _tile_min_max(kv_segment_ids, block_kv)
    meet = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
    one = ((q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :]
           & (q_lo[:, :, None] == k_lo[:, None, :]))
    kind = jnp.minimum(kind, jnp.where(meet, jnp.where(one, FULL, MASKED), SKIP))
  if mask is not None:
    kind = jnp.minimum(kind, mask_classes(mask, block_q, block_kv))
  if spec.mask_object is not None:
    info = block_info.block_info(spec.mask_object, spec.q_len, spec.kv_len, block_q, block_kv)
    kind = jnp.minimum(kind, constant(info.kind)[None])
  return kind.swapaxes(1, 2) if transpose else kind


def mask_classes(mask, block_q: int, block_kv: int):
  """[B or 1, nq, nkv] int32 tile classes of a dense mask [B or 1, N or 1, T, S].

  Entries past T or S do not count; a tile is visited if any head sees part of it.
  """
  bm, nm, t, s = mask.shape
  nq, nkv = _cdiv(t, block_q), _cdiv(s, block_kv)
  widths = ((0, 0), (0, 0), (0, nq * block_q - t), (0, nkv * block_kv - s))
  tiles = (mask != 0).reshape(bm, nm, t, s)
  any_ = jnp.pad(tiles, widths, constant_values=False).reshape(
      bm, nm, nq, block_q, nkv, block_kv).any(axis=(1, 3, 5))
  all_ = jnp.pad(tiles, widths, constant_values=True).reshape(
      bm, nm, nq, block_q, nkv, block_kv).all(axis=(1, 3, 5))
  return jnp.where(any_, jnp.where(all_, FULL, MASKED), SKIP)


def compact(kind, xp=jnp) -> TileList:
  """The :class:`TileList` of tile classes `kind` [..., R, C] (`xp`: jnp, or np on the host).

  Full tiles come first, then masked ones: a kernel runs two loops, the first without
  any masking (and without a branch per tile, so Triton can pipeline it).
  """
  order = xp.where(kind == FULL, 0, xp.where(kind == MASKED, 1, 2))
  count = xp.sum(kind != SKIP, axis=-1).astype(np.int32)
  full = xp.sum(kind == FULL, axis=-1).astype(np.int32)
  if xp is np:
    index = np.argsort(order, axis=-1, kind="stable")
  else:
    index = jnp.argsort(order, axis=-1, stable=True)
  return TileList(count, index.astype(np.int32), full)


def _tile_min_max(ids, block: int):
  """Per tile of `block` columns of ids [B, L]: (min, max) over its real entries."""
  b, length = ids.shape
  n = _cdiv(length, block)
  pad = n * block - length
  lo = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).max)
  hi = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).min)
  return lo.reshape(b, n, block).min(-1), hi.reshape(b, n, block).max(-1)


def fold_tile_list(count: Index, full: Index, tile: Callable[[Index], Index],
                   body: Callable[..., Any], carry: Any) -> Any:
  """Runs ``carry = body(j, carry, masked=...)`` over a row of a :class:`TileList`.

  `tile(t)` gives the t-th entry's column index; entries [0, full) run unmasked, then
  [full, count) masked: two loops, no branch per tile. (Online softmax does not care
  about the order in which a row's tiles arrive.)
  """

  def run(masked):
    return lambda t, carry: body(tile(t), carry, masked=masked)

  carry = lax.fori_loop(0, full, run(False), carry)
  return lax.fori_loop(full, count, run(True), carry)
