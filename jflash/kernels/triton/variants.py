"""The runtime operands of the variants, as Triton kernel inputs (shared by all kernels).

Each kernel takes q, k, v (and its own inputs), then the extra inputs this module builds
for the call's variants, in this order, each only when its variant is on:

* ``pos``: [B, 3] int32 (q_offset, query length, key length), read as scalars;
* ``q_seg``, ``kv_seg``: [B, T], [B, S] int32 segment ids, tiled by the kernel;
* ``count``, ``index``, ``full``: the kernel's tile lists (:func:`jflash.masks.tile_lists`);
* ``slopes``: [B, N] float32 ALiBi slopes, read as scalars.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.experimental import pallas as pl

from jflash import masks
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

  def positions(self, spec: MaskSpec, b) -> Positions:
    """The positional mask values of batch element `b` (static ints where possible)."""
    if self.pos is None:
      return spec.positions()
    return spec.positions(offset=self.pos[b, 0] if spec.dynamic_offset else None,
                          q_len=self.pos[b, 1] if spec.q_lengths else None,
                          kv_len=self.pos[b, 2] if spec.kv_lengths else None)


def _whole(x):
  return pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


def inputs(spec: MaskSpec, score_mod: ScoreMod, operands: Operands, *, block_q: int,
           block_kv: int, q_seg_spec, kv_seg_spec, transpose: bool = False):
  """(arrays, block specs, names) of a kernel's extra inputs.

  `q_seg_spec` / `kv_seg_spec` are the BlockSpecs the kernel reads segment ids with;
  `block_q`, `block_kv`, `transpose` shape its tile lists.
  """
  arrays, specs, names = [], [], []

  def add(name, x, block_spec=None):
    arrays.append(x)
    specs.append(block_spec or _whole(x))
    names.append(name)

  positions = spec.batch_positions(operands.q_offset, operands.q_lengths, operands.kv_lengths)
  if spec.dynamic_positions:
    b = next(x.shape[0] for x in positions if not isinstance(x, int))
    add("pos", jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.int32), (b,)) for x in positions],
                         axis=1))
  if spec.segment_ids:
    add("q_seg", operands.q_segment_ids, q_seg_spec)
    add("kv_seg", operands.kv_segment_ids, kv_seg_spec)
    lists = masks.tile_lists(spec, block_q, block_kv, positions=positions,
                             q_segment_ids=operands.q_segment_ids,
                             kv_segment_ids=operands.kv_segment_ids, transpose=transpose)
    for name, x in zip(("count", "index", "full"), lists):
      add(name, x)
  if score_mod.alibi:
    add("slopes", operands.alibi_slopes)
  return arrays, specs, tuple(names)


def unpack(refs, names) -> Extras:
  return Extras(**dict(zip(names, refs)))
