"""Static block-sparse masks: which (query, key) pairs attend, known at trace time.

A :class:`Mask` is a small, immutable, hashable description of a boolean T x S mask:
``mask(i, j)`` is True where query i attends to key j (raw indices, 0 <= i < T and
0 <= j < S). Primitives (:class:`Causal`, :class:`LocalWindow`, :class:`ChunkedCausal`,
:class:`Strided`, :class:`GlobalTokens`, :class:`BlockLayout`) compose with ``&`` and
``|``; the factorised "strided" head of Child et al. (2019) with stride 128 is::

    (Strided(128) | LocalWindow(127, 0)) & Causal()

Because a mask is static, its block-sparse structure (FlashAttention, Dao et al. 2022,
Sec. 3.3) is computed once, on the host at trace time, by
:func:`jflash.block_info.block_info`. It
classifies every tile of a (block_q, block_kv) tiling of the score matrix::

    SKIP    no entry is visible: never loaded, never computed
    MASKED  some entries are visible: computed, then masked with the tile's pattern
    FULL    every entry is visible: computed, never masked

A kernel visits only the non-SKIP tiles, through per-block-row compact lists of tile
indices built once from ``BlockInfo.kind`` (:func:`jflash.schedule.compact`), so its work
grows with the number of visited tiles (:func:`jflash.block_info.density`), not with
T x S. A MASKED tile reads its pattern from ``BlockInfo.blocks[BlockInfo.block_ids[r,
c]]``: the distinct partial patterns are deduplicated, and structured masks have few of
them (with square tiles, every interior diagonal tile of ``Causal()`` shares one). The
backward pass, which walks key tiles and for each the query tiles that see it, uses
:func:`jflash.block_info.transposed`.

Everything here is NumPy on Python ints: masks are never traced, and
:func:`jflash.block_info.block_info` is memoised on (mask, sizes), so a jitted function
retraced with the same mask does not pay for it twice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jflash.sparsity_base import (FULL, MASKED, SKIP, And, Mask, Or, _all_visible, _indices,
                                  _int)

__all__ = ["FULL", "MASKED", "SKIP", "And", "BlockLayout", "Causal", "ChunkedCausal",
           "GlobalTokens", "LocalWindow", "Mask", "Or", "Strided"]


@dataclasses.dataclass(frozen=True)
class Causal(Mask):
  """Query i sees key j iff ``j <= i + offset``.

  ``offset = 0`` is the top-left alignment of jax.nn; ``offset = S - T`` aligns the last
  query with the last key (decoding against a cache). T=4, S=6::

      Causal()            Causal(offset=2)
      x . . . . .         x x x . . .
      x x . . . .         x x x x . .
      x x x . . .         x x x x x .
      x x x x . .         x x x x x x

  Attributes:
    offset: an int (any sign).

  Raises:
    ValueError: offset is not an int.
  """

  offset: int = 0

  def __post_init__(self):
    object.__setattr__(self, "offset", _int("Causal", "offset", self.offset))

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    return k <= q + self.offset

  def _row_intervals(self, q_idx, kv_len):
    hi = np.clip(q_idx + (self.offset + 1), 0, kv_len)
    return np.zeros_like(hi), hi


@dataclasses.dataclass(frozen=True)
class LocalWindow(Mask):
  """Query i sees key j iff ``i + offset - left <= j <= i + offset + right``.

  None leaves that side unbounded (sliding-window attention, e.g. Mistral:
  ``Causal() & LocalWindow(w - 1, 0)``, or simply ``LocalWindow(w - 1, 0)``). T=4, S=6::

      LocalWindow(1, 1)   LocalWindow(1, 0)   LocalWindow(None, 1, offset=2)
      x x . . . .         x . . . . .         x x x x . .
      x x x . . .         x x . . . .         x x x x x .
      . x x x . .         . x x . . .         x x x x x x
      . . x x x .         . . x x . .         x x x x x x

  Attributes:
    left: keys before the query's position it sees: a non-negative int or None.
    right: keys after the query's position it sees: a non-negative int or None.
    offset: query i sits at position ``i + offset`` (an int).

  Raises:
    ValueError: left or right is negative or not an int (nor None), or offset is not
      an int.
  """

  left: int | None
  right: int | None
  offset: int = 0

  def __post_init__(self):
    object.__setattr__(self, "left", _int("LocalWindow", "left", self.left, 0, True))
    object.__setattr__(self, "right", _int("LocalWindow", "right", self.right, 0, True))
    object.__setattr__(self, "offset", _int("LocalWindow", "offset", self.offset))

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    at = q + self.offset
    if self.left is None and self.right is None:
      return _all_visible(q, k)
    if self.left is None:
      return k <= at + self.right
    if self.right is None:
      return k >= at - self.left
    return (k >= at - self.left) & (k <= at + self.right)

  def _row_intervals(self, q_idx, kv_len):
    at = q_idx + self.offset
    lo = (np.zeros_like(at) if self.left is None
          else np.clip(at - self.left, 0, kv_len))
    hi = (np.full_like(at, kv_len) if self.right is None
          else np.clip(at + (self.right + 1), 0, kv_len))
    return lo, hi


@dataclasses.dataclass(frozen=True)
class ChunkedCausal(Mask):
  """Query i sees key j iff ``i // chunk_size == j // chunk_size and j <= i``.

  Causal attention within consecutive chunks, nothing across them (Llama 4's chunked
  attention layers). ChunkedCausal(2), T=S=6::

      x . . . . .
      x x . . . .
      . . x . . .
      . . x x . .
      . . . . x .
      . . . . x x

  Attributes:
    chunk_size: a positive int.

  Raises:
    ValueError: chunk_size is not a positive int.
  """

  chunk_size: int

  def __post_init__(self):
    object.__setattr__(self, "chunk_size",
                       _int("ChunkedCausal", "chunk_size", self.chunk_size, 1))

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    return (q // self.chunk_size == k // self.chunk_size) & (k <= q)

  def _row_intervals(self, q_idx, kv_len):
    lo = np.clip(q_idx // self.chunk_size * self.chunk_size, 0, kv_len)
    return lo, np.clip(q_idx + 1, 0, kv_len)


@dataclasses.dataclass(frozen=True)
class Strided(Mask):
  """Query i sees key j iff ``(i - j) % stride == 0``.

  The strided head of Child et al. (2019), "Generating Long Sequences with Sparse
  Transformers". Composed, it gives their factorised patterns, e.g. with stride l::

      (Strided(l) | LocalWindow(l - 1, 0)) & Causal()   # both heads in one
      Strided(l) & Causal()                             # the strided head alone

  Strided(3), and ``(Strided(3) | LocalWindow(1, 0)) & Causal()``, T=S=6::

      x . . x . .         x . . . . .
      . x . . x .         x x . . . .
      . . x . . x         . x x . . .
      x . . x . .         x . x x . .
      . x . . x .         . x . x x .
      . . x . . x         . . x . x x

  Attributes:
    stride: a positive int.

  Raises:
    ValueError: stride is not a positive int.
  """

  stride: int

  def __post_init__(self):
    object.__setattr__(self, "stride", _int("Strided", "stride", self.stride, 1))

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    if self.stride & (self.stride - 1) == 0:  # a power of two: a mask, not a division
      return (q - k) & (self.stride - 1) == 0
    return (q - k) % self.stride == 0


@dataclasses.dataclass(frozen=True)
class GlobalTokens(Mask):
  """Query i sees key j iff ``i < num_tokens or j < num_tokens``.

  The first num_tokens tokens are global: they see, and are seen by, every token
  (Longformer, BigBird). Combine with a local pattern, e.g.
  ``GlobalTokens(2) | LocalWindow(1, 1)``. GlobalTokens(2), and that, T=S=6::

      x x x x x x         x x x x x x
      x x x x x x         x x x x x x
      x x . . . .         x x x x . .
      x x . . . .         x x x x x .
      x x . . . .         x x . x x x
      x x . . . .         x x . . x x

  Attributes:
    num_tokens: a non-negative int.

  Raises:
    ValueError: num_tokens is not a non-negative int.
  """

  num_tokens: int

  def __post_init__(self):
    object.__setattr__(self, "num_tokens",
                       _int("GlobalTokens", "num_tokens", self.num_tokens, 0))

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    return (q < self.num_tokens) | (k < self.num_tokens)

  def _row_intervals(self, q_idx, kv_len):
    hi = np.where(q_idx < self.num_tokens, kv_len, min(self.num_tokens, kv_len))
    return np.zeros_like(q_idx), hi.astype(q_idx.dtype)


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class BlockLayout(Mask):
  """Query i sees key j iff ``layout[i // block_q, j // block_kv]``.

  A user-given block pattern (e.g. BigBird's random blocks). The layout must cover the
  problem exactly: shape (ceil(T / block_q), ceil(S / block_kv)) (see :meth:`check`).
  Indices outside the layout are not visible. ``BlockLayout([[1, 0], [1, 1]], 2, 3)``,
  T=4, S=6::

      x x x . . .
      x x x . . .
      x x x x x x
      x x x x x x

  The layout is stored as bytes, so the mask is hashable and equal to another with the
  same layout and block sizes.

  Args:
    layout: 2-D array-like of bools (or of 0/1 ints), with at least one entry.
    block_q: rows of the mask per layout row, a positive int.
    block_kv: columns of the mask per layout column, a positive int.

  Raises:
    ValueError: layout is not a non-empty 2-D array of bools or 0/1 ints, or a block
      size is not a positive int.
  """

  layout_shape: tuple[int, int]
  layout_bytes: bytes
  block_q: int
  block_kv: int

  def __init__(self, layout, block_q: int, block_kv: int):
    arr = np.asarray(layout)
    if arr.ndim != 2 or arr.size == 0:
      raise ValueError(f"BlockLayout: layout must be a non-empty 2-D array, got shape "
                       f"{arr.shape}")
    if arr.dtype != np.bool_:
      if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"BlockLayout: layout must hold bools or 0/1 ints, got dtype "
                         f"{arr.dtype} with values {np.unique(arr)[:8]}")
      arr = arr.astype(bool)
    object.__setattr__(self, "layout_shape", (int(arr.shape[0]), int(arr.shape[1])))
    object.__setattr__(self, "layout_bytes", np.ascontiguousarray(arr).tobytes())
    object.__setattr__(self, "block_q", _int("BlockLayout", "block_q", block_q, 1))
    object.__setattr__(self, "block_kv", _int("BlockLayout", "block_kv", block_kv, 1))

  @property
  def layout(self) -> np.ndarray:
    """The layout: a read-only np.bool_ array of shape `layout_shape`."""
    return np.frombuffer(self.layout_bytes, np.bool_).reshape(self.layout_shape)

  def __repr__(self) -> str:
    n, m = self.layout_shape
    return (f"BlockLayout(layout=<bool[{n}, {m}], {int(self.layout.sum())} set>, "
            f"block_q={self.block_q}, block_kv={self.block_kv})")

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    q, k = _indices(q_idx, kv_idx)
    n, m = self.layout_shape
    r, c = q // self.block_q, k // self.block_kv
    inside = (r >= 0) & (r < n) & (c >= 0) & (c < m)
    return self.layout[np.clip(r, 0, n - 1), np.clip(c, 0, m - 1)] & inside

  def check(self, q_len: int, kv_len: int) -> None:
    """Raises ValueError unless the layout has shape (ceil(T/block_q), ceil(S/block_kv))."""
    need = (-(-q_len // self.block_q), -(-kv_len // self.block_kv))
    if self.layout_shape != need:
      raise ValueError(
          f"BlockLayout: layout shape {self.layout_shape} does not cover T={q_len} x "
          f"S={kv_len} with blocks ({self.block_q}, {self.block_kv}): it needs shape "
          f"{need}")
