"""Which (query, key) pairs attend, and which tiles of the score matrix to visit.

Every backend walks the T x S score matrix in tiles. :class:`MaskSpec` says which
entries are visible; :meth:`MaskSpec.kv_tiles` and :meth:`MaskSpec.q_tiles` split the
tiles of one block row (or column) into three contiguous runs::

    [lo, full_lo)       straddle the mask edge: computed, then masked
    [full_lo, full_hi)  fully visible: computed, never masked
    [full_hi, hi)       straddle the mask edge: computed, then masked

Tiles outside [lo, hi) are entirely masked and never computed. With ``is_causal`` the
mask is aligned top-left as in ``jax.nn.dot_product_attention`` (query i sees keys
j <= i), here for T=4 queries and S=6 keys (``x`` visible)::

    x . . . . .
    x x . . . .
    x x x . . .
    x x x x . .

The functions work on Python ints and on traced int32 scalars alike, so the Pallas
kernels and the pure-JAX backend share them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
from jax import lax

Index = Any  # a Python int or a traced int32 scalar


class TileRange(NamedTuple):
  """Tiles [lo, hi) to visit; [full_lo, full_hi) need no mask (lo<=full_lo<=full_hi<=hi)."""

  lo: Index
  full_lo: Index
  full_hi: Index
  hi: Index


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """The attention mask of one call: sequence lengths and causality.

  Attributes:
    q_len: T, the number of queries.
    kv_len: S, the number of keys and values.
    is_causal: query i sees key j only if j <= i (top-left alignment).
  """

  q_len: int
  kv_len: int
  is_causal: bool = False

  def visible(self, q_pos, kv_pos):
    """Boolean array: query position `q_pos` sees key position `kv_pos` (broadcasting).

    Positions past the end of either sequence are never visible.
    """
    vis = (q_pos < self.q_len) & (kv_pos < self.kv_len)
    if self.is_causal:
      vis = vis & (kv_pos <= q_pos)
    return vis

  def kv_tiles(self, q_start: Index, block_q: int, block_kv: int) -> TileRange:
    """Key tiles that the query tile [q_start, q_start + block_q) must visit.

    A tile is "full" when every entry is visible to every query row < T; rows >= T
    are padding whose results are dropped, so they do not make a tile masked.
    """
    num_tiles = _cdiv(self.kv_len, block_kv)
    hi, full_hi = num_tiles, self.kv_len // block_kv
    if self.is_causal:
      q_last = _min(q_start + block_q, self.q_len) - 1
      hi = _min(hi, _div(q_last, block_kv) + 1)
      full_hi = _min(full_hi, _div(q_start + 1, block_kv))
    return _ordered(0, 0, full_hi, hi)

  def q_tiles(self, kv_start: Index, block_kv: int, block_q: int) -> TileRange:
    """Query tiles that see the key tile [kv_start, kv_start + block_kv).

    A tile is "full" when every entry is visible for every key column < S; columns >= S
    are padding whose gradients are dropped.
    """
    hi, full_hi = _cdiv(self.q_len, block_q), self.q_len // block_q
    lo = full_lo = 0
    if self.is_causal:
      lo = _div(kv_start, block_q)
      kv_last = _min(kv_start + block_kv, self.kv_len) - 1
      full_lo = _cdiv(kv_last, block_q)
      hi = _where(kv_start < self.q_len, hi, 0)  # keys past the last query: no one sees them
    return _ordered(lo, full_lo, full_hi, hi)


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


def _ordered(lo, full_lo, full_hi, hi) -> TileRange:
  lo = _min(lo, hi)
  full_lo = _max(_min(full_lo, hi), lo)
  full_hi = _max(_min(full_hi, hi), full_lo)
  return TileRange(lo, full_lo, full_hi, hi)


def _static(*xs) -> bool:
  return all(isinstance(x, int) for x in xs)


def _div(a: Index, b: int) -> Index:
  """a // b for a >= 0 (lax.div truncates, which is floor for non-negative a)."""
  return a // b if _static(a) else lax.div(a, jnp.asarray(b, a.dtype))


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
