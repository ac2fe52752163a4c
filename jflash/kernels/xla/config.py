"""The config of the ``"xla"`` backend: tile sizes of its blockwise loops."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class XlaConfig:
  """Tile sizes of the blockwise pure-JAX backend (``implementation="xla"``).

  The forward pass and the dQ loop take `block_q` queries at a time and stream keys
  `block_kv` at a time; the dK/dV loop holds `block_kv` keys and streams `block_q`
  queries. There is no shared memory to fit: large tiles keep the sequential loops
  short (one [B, N, block_q, block_kv] float32 score tile per step), and memory stays
  linear in the sequence lengths. A tile larger than its sequence is shrunk to it.

  Raises:
    ValueError: a block size that is not an integer in [1, 8192], naming the field.
  """

  block_q: int = 512
  block_kv: int = 512

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 8192:
        raise ValueError(f"XlaConfig.{name}={value!r} must be an integer in [1, 8192]")
