"""The block-sparse structure of a static mask object on a tiling, computed on the host.

:func:`block_info` classifies every (block_q, block_kv) tile of a T x S problem as SKIP,
MASKED or FULL for a :class:`jflash.sparsity.Mask`, and deduplicates the patterns of the
MASKED tiles; :func:`transposed` gives the same for the backward's key-major walk. NumPy
only, memoised: it runs at trace time (see :mod:`jflash.sparsity` for the objects).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from jflash.sparsity_base import FULL, MASKED, SKIP, Mask, _int


class BlockInfo(NamedTuple):
  """The block-sparse structure of a mask on a (block_q, block_kv) tiling.

  With nq = ceil(T / block_q) and nkv = ceil(S / block_kv). The arrays are read-only
  (they are shared through the cache of :func:`block_info`).

  kind: np.int32 [nq, nkv], the class of each tile: SKIP, MASKED or FULL, judged on
    its entries with i < T and j < S only (a ragged edge tile can be FULL; the padding
    past T and S is the kernel's to mask, as without a mask).
  block_ids: np.int32 [nq, nkv], for a MASKED tile the index into `blocks` of its
    pattern; 0 for other tiles.
  blocks: np.bool_ [U, block_q, block_kv], the distinct patterns of MASKED tiles,
    False at i >= T or j >= S; U >= 1 (one all-False block when no tile is MASKED).
  """

  kind: np.ndarray
  block_ids: np.ndarray
  blocks: np.ndarray


def block_info(mask: Mask, q_len: int, kv_len: int, block_q: int,
               block_kv: int) -> BlockInfo:
  """The tile classes and deduplicated partial patterns of `mask` on a T x S problem.

  Runs on the host, one block row of tiles at a time (memory O(block_q * S)), and is
  memoised on its arguments: an equal mask with equal sizes returns the same object.
  Masks whose query rows each see one run of keys (Causal, LocalWindow, ChunkedCausal,
  GlobalTokens and their Ands) are classified from the runs, without building the
  mask; others are evaluated densely, block row by block row.

  Args:
    mask: a :class:`Mask`.
    q_len: T, a positive int.
    kv_len: S, a positive int.
    block_q: query rows per tile, a positive int.
    block_kv: key columns per tile, a positive int.

  Returns:
    A :class:`BlockInfo` of nq = ceil(T / block_q) by nkv = ceil(S / block_kv) tiles.

  Raises:
    ValueError: mask is not a Mask, a size is not a positive int, or
      ``mask.check(q_len, kv_len)`` rejects the sizes (e.g. a BlockLayout of another
      shape).
  """
  if not isinstance(mask, Mask):
    raise ValueError(f"block_info: mask must be a Mask, got {mask!r} ({type(mask).__name__})")
  sizes = [_int("block_info", name, value, 1) for name, value in
           (("q_len", q_len), ("kv_len", kv_len), ("block_q", block_q),
            ("block_kv", block_kv))]
  mask.check(sizes[0], sizes[1])
  return _block_info(mask, *sizes)


@functools.lru_cache(maxsize=32)
def _block_info(mask: Mask, q_len: int, kv_len: int, block_q: int,
                block_kv: int) -> BlockInfo:
  nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
  kind = np.zeros((nq, nkv), np.int32)
  block_ids = np.zeros((nq, nkv), np.int32)
  c0 = np.arange(nkv, dtype=np.int64) * block_kv  # first column of each tile
  c1 = np.minimum(c0 + block_kv, kv_len)          # one past its last real column
  offsets = np.arange(block_kv, dtype=np.int64)
  seen: dict[bytes, int] = {}
  blocks: list[np.ndarray] = []
  for r in range(nq):
    rows = np.arange(r * block_q, min((r + 1) * block_q, q_len), dtype=np.int64)
    runs = mask._row_intervals(rows, kv_len)
    if runs is not None:
      lo, hi = runs[0][:, None], runs[1][:, None]
      has = (np.maximum(lo, c0) < np.minimum(hi, c1)).any(axis=0)
      full = ((lo <= c0) & (hi >= c1)).all(axis=0)
    else:
      vis = np.asarray(mask(rows[:, None], np.arange(kv_len)[None, :]), bool)
      vis = np.broadcast_to(vis, (len(rows), kv_len))
      pad = nkv * block_kv - kv_len
      has = np.pad(vis.any(axis=0), (0, pad)).reshape(nkv, block_kv).any(axis=1)
      full = np.pad(vis.all(axis=0), (0, pad), constant_values=True).reshape(
          nkv, block_kv).all(axis=1)
    kind[r] = np.where(full, FULL, np.where(has, MASKED, SKIP))
    cols_m = np.flatnonzero(kind[r] == MASKED)
    if not len(cols_m):
      continue
    cols = c0[cols_m][:, None] + offsets  # [M, block_kv]
    if runs is not None:
      pattern = (lo[:, :, None] <= cols) & (cols < hi[:, :, None])  # [n, M, block_kv]
    else:
      pattern = vis[:, np.minimum(cols, kv_len - 1)] & (cols < kv_len)
    tiles = np.zeros((len(cols_m), block_q, block_kv), bool)
    tiles[:, :len(rows)] = pattern.transpose(1, 0, 2)
    packed = np.packbits(tiles.reshape(len(cols_m), -1), axis=1)
    for t, c in enumerate(cols_m):
      key = packed[t].tobytes()
      idx = seen.setdefault(key, len(seen))
      if idx == len(blocks):
        blocks.append(tiles[t])
      block_ids[r, c] = idx
  stacked = np.stack(blocks) if blocks else np.zeros((1, block_q, block_kv), bool)
  return _frozen(BlockInfo(kind, block_ids, stacked))


def _frozen(info: BlockInfo) -> BlockInfo:
  for a in info:
    a.setflags(write=False)
  return info


def transposed(info: BlockInfo) -> BlockInfo:
  """The BlockInfo of the transposed problem (keys as rows), for a backward kernel.

  Args:
    info: a BlockInfo of nq x nkv tiles of (block_q, block_kv).

  Returns:
    A read-only BlockInfo of nkv x nq tiles of (block_kv, block_q): kind and block_ids
    transposed ([nkv, nq]), blocks [U, block_kv, block_q].
  """
  return _frozen(BlockInfo(np.ascontiguousarray(info.kind.T),
                           np.ascontiguousarray(info.block_ids.T),
                           np.ascontiguousarray(info.blocks.transpose(0, 2, 1))))


def density(info: BlockInfo) -> float:
  """The fraction of tiles that are not SKIP (visited), in [0, 1]."""
  return float(np.count_nonzero(info.kind != SKIP)) / info.kind.size
