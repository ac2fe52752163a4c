"""The static mask protocol of :mod:`jflash.sparsity`: :class:`Mask`, the And / Or
combinators that ``&`` and ``|`` build, the tile classes and the argument checks the
mask objects share. Users import these names from :mod:`jflash.sparsity`; the mask
patterns themselves (Causal, LocalWindow, ...) are defined there.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import operator
import numbers

import numpy as np

SKIP, MASKED, FULL = 0, 1, 2  # tile classes (jflash.block_info, jflash.masks)


def _int(owner: str, name: str, value, minimum: int | None = None,
         allow_none: bool = False) -> int | None:
  """`value` as a Python int (None passes if `allow_none`), else ValueError."""
  if value is None and allow_none:
    return None
  ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
  if ok and (minimum is None or value >= minimum):
    return int(value)
  kind = "an int" if minimum is None else (
      "a positive int" if minimum == 1 else f"an int >= {minimum}")
  if minimum == 0:
    kind = "a non-negative int"
  if allow_none:
    kind += " or None"
  raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")


def _indices(q_idx, kv_idx) -> tuple[np.ndarray, np.ndarray]:
  q, k = np.asarray(q_idx), np.asarray(kv_idx)
  for name, x in (("q_idx", q), ("kv_idx", k)):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
  return q, k


def _all_visible(q: np.ndarray, k: np.ndarray) -> np.ndarray:
  return np.ones(np.broadcast_shapes(q.shape, k.shape), bool)


class Mask(abc.ABC):
  """A static attention mask: which query index sees which key index.

  Subclasses are frozen dataclasses (hashable, equal when their fields are equal), so
  a mask can key a cache and be a static argument of ``jax.jit``. Compose masks with
  ``a & b`` (:class:`And`: visible where both are) and ``a | b`` (:class:`Or`: visible
  where either is).

  A subclass implements :meth:`__call__`; it may also override :meth:`check` (sizes it
  cannot apply to) and ``_row_intervals`` (a fast path of `jflash.block_info.block_info` for masks
  whose every query row sees one contiguous run of keys).
  """

  @abc.abstractmethod
  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    """Whether query `q_idx` attends to key `kv_idx`, with NumPy broadcasting.

    Args:
      q_idx: integer array (or int) of query indices i, usually [T, 1].
      kv_idx: integer array (or int) of key indices j, usually [1, S].

    Returns:
      np.bool_ array of the broadcast shape: True where query i sees key j.

    Raises:
      ValueError: an index array is not of an integer dtype.
    """

  def check(self, q_len: int, kv_len: int) -> None:
    """Raises ValueError if the mask cannot apply to a T=q_len x S=kv_len problem."""
    del q_len, kv_len

  def _row_intervals(self, q_idx: np.ndarray, kv_len: int):
    """Per query row, the half-open run of keys it sees, or None if rows are not runs.

    Args:
      q_idx: int64 [n] query indices.
      kv_len: S.

    Returns:
      None, or (lo, hi): int64 [n] each, in [0, S], such that among keys 0 <= j < S
      query q_idx[r] sees exactly lo[r] <= j < hi[r] (none when lo[r] >= hi[r]).
    """
    del q_idx, kv_len
    return None

  def __and__(self, other):
    if not isinstance(other, Mask):
      return NotImplemented
    return And(self, other)

  def __or__(self, other):
    if not isinstance(other, Mask):
      return NotImplemented
    return Or(self, other)


def _parts(cls, masks: tuple) -> tuple[Mask, ...]:
  """The parts of an And/Or: validated, with nested ones of the same kind flattened."""
  name = cls.__name__
  if len(masks) < 2:
    raise ValueError(f"{name} needs at least two masks, got {len(masks)}: {masks!r}")
  flat = []
  for m in masks:
    if not isinstance(m, Mask):
      raise ValueError(f"{name}: every part must be a Mask, got {m!r} "
                       f"({type(m).__name__})")
    flat.extend(m.masks if type(m) is cls else (m,))
  return tuple(flat)


class _Combination(Mask):
  """And / Or: `masks` combined elementwise by the subclass's `_combine`."""

  masks: tuple[Mask, ...]

  def __init__(self, *masks: Mask):
    object.__setattr__(self, "masks", _parts(type(self), masks))

  def __repr__(self) -> str:
    return f"{type(self).__name__}({', '.join(map(repr, self.masks))})"

  def __call__(self, q_idx, kv_idx) -> np.ndarray:
    return functools.reduce(self._combine, (m(q_idx, kv_idx) for m in self.masks))

  def check(self, q_len: int, kv_len: int) -> None:
    for m in self.masks:
      m.check(q_len, kv_len)


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class And(_Combination):
  """Visible where every part is: ``And(a, b)`` is ``a & b``.

  Nested Ands are flattened: ``a & b & c == And(a, b, c)``. ``Causal() & LocalWindow(1,
  0)``, T=S=4::

      x . . .
      x x . .
      . x x .
      . . x x

  Args:
    *masks: at least two Mask instances.

  Raises:
    ValueError: fewer than two parts, or a part that is not a Mask.
  """

  masks: tuple[Mask, ...]
  _combine = staticmethod(operator.and_)

  def _row_intervals(self, q_idx, kv_len):
    runs = [m._row_intervals(q_idx, kv_len) for m in self.masks]
    if any(r is None for r in runs):
      return None
    return (functools.reduce(np.maximum, [lo for lo, _ in runs]),
            functools.reduce(np.minimum, [hi for _, hi in runs]))


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class Or(_Combination):
  """Visible where any part is: ``Or(a, b)`` is ``a | b``.

  Nested Ors are flattened: ``a | b | c == Or(a, b, c)``. ``GlobalTokens(1) |
  LocalWindow(0, 0)``, T=S=4::

      x x x x
      x x . .
      x . x .
      x . . x

  Args:
    *masks: at least two Mask instances.

  Raises:
    ValueError: fewer than two parts, or a part that is not a Mask.
  """

  masks: tuple[Mask, ...]
  _combine = staticmethod(operator.or_)
