"""Helpers shared by the Mosaic GPU forward and backward kernels."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.mosaic import gpu as mgpu

from jflash.kernels.mosaic_gpu.config import kernel_head_dim, swizzle_bytes
from jflash.masks import TileRange

Index = Any  # a Python int or a traced int32 scalar


@dataclasses.dataclass(frozen=True)
class Ring:
  """A ring of `stages` shared-memory slots filled with stream entries 0, 1, 2, ..."""

  stages: int

  def slot(self, e):
    return lax.rem(e, jnp.int32(self.stages))

  def drain_start(self, end: Index) -> Index:
    """The first of the last `stages` entries before `end` (the ones still in the ring)."""
    if isinstance(end, int):
      return max(0, end - self.stages)
    return jnp.maximum(0, end - self.stages)


def _clamp(x, lo, hi):
  """min(max(x, lo), hi) for lo <= hi (static where the bounds decide it)."""
  if all(isinstance(a, int) for a in (x, lo, hi)):
    return min(max(x, lo), hi)
  if isinstance(x, int) and isinstance(lo, int) and x <= lo:
    return lo  # e.g. a causal range's first tile: an empty run stays a static one
  return jnp.minimum(jnp.maximum(x, lo), hi)


def clamp_tiles(tiles: TileRange, outer: TileRange) -> TileRange:
  """`tiles` clipped into [outer.lo, outer.hi) (unchanged if it already lies inside)."""
  lo = _clamp(tiles.lo, outer.lo, outer.hi)
  hi = _clamp(tiles.hi, lo, outer.hi)
  full_lo = _clamp(tiles.full_lo, lo, hi)
  return TileRange(lo, full_lo, _clamp(tiles.full_hi, full_lo, hi), hi)


def fori(lo: Index, hi: Index, body, carry):
  """lax.fori_loop, dropped at trace time when the bounds are equal Python ints."""
  if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
    return carry
  return lax.fori_loop(lo, hi, body, carry)


def opaque(index: Index):
  """`index` as an int32 that LLVM cannot see through (an optimization barrier).

  A shared-memory tile indexed with it inside a loop body has its wgmma descriptors (64
  bits each, one per 16-wide step of the contraction) computed at each use; indexed with
  a loop-invariant value, LLVM hoists them out of the loop, where they stay live in
  registers throughout: 32 descriptors, 64 registers a thread, in the fused dK/dV
  kernel at H = 128, which ptxas spilled (172-348 bytes; 0 with this; BUILD_NOTES,
  issue 10 session 15).
  """
  return lax.optimization_barrier(jnp.asarray(index, jnp.int32))


def positions(row_start, col_start, shape):
  """(row, column) int32 index tiles, both [rows, cols] = `shape` in the WGMMA layout,
  starting at `row_start` and `col_start` (ints or int32 scalars): broadcasts of two
  1-D iotas in the layout's row and column layouts, which hold rows / 32 and cols / 4
  registers a thread, where two [rows, cols] int32 tiles would hold rows * cols / 64."""
  wgmma = plgpu.Layout.WGMMA
  rows = row_start + plgpu.broadcasted_iota(jnp.int32, shape[:1], 0, layout=wgmma.reduce(1))
  cols = col_start + plgpu.broadcasted_iota(jnp.int32, shape[1:], 0, layout=wgmma.reduce(0))
  return lax.broadcast_in_dim(rows, shape, [0]), lax.broadcast_in_dim(cols, shape, [1])


def smem(shape, dtype, swizzle: int | None = None):
  """A shared-memory buffer in the tiled, swizzled layout TMA and wgmma use; `swizzle`
  bytes (default: the widest that divides a row; wgmma needs equal swizzles on both
  operands)."""
  swizzle = swizzle or swizzle_bytes(shape[-1], dtype)
  tiling = plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize))
  return plgpu.SMEM(shape, dtype, transforms=(tiling, plgpu.SwizzleTransform(swizzle)))


def _pad_axis(x, axis: int, size: int):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pad_inputs(q, k, v, q_multiple: int, kv_multiple: int):
  """q, k, v zero-padded: T and S to whole tiles, H to the kernels' head dim.

  Zero head-dim columns change no score, and the padded rows and columns are masked
  or sliced off by the callers.
  """
  return pad(q, q_multiple), pad(k, kv_multiple), pad(v, kv_multiple)


def pad(x, multiple: int):
  """[B, L, heads, H] zero-padded: L to a multiple of `multiple`, H to the kernels' H."""
  x = _pad_axis(x, 3, kernel_head_dim(x.shape[3]))
  return _pad_axis(x, 1, round_up(x.shape[1], multiple))


def num_ctas(num_items: int, persistent: bool, interpret: bool) -> int:
  """CTAs of a launch over `num_items` work items: one per SM if `persistent` (in
  interpret mode 3, so that each runs several items), else one per item."""
  if not persistent:
    return num_items
  if interpret:
    return min(num_items, 3)
  sms = getattr(jax.local_devices()[0], "core_count", None) or 132  # H100/H200 SXM: 132
  return min(num_items, sms)


def work_items(num_items: int):
  """(local_count, item) of this CTA (grid axis "cta") of a launch from :func:`num_ctas`.

  The CTA runs work items ``item(0), ..., item(local_count - 1)``. Items are dealt in
  waves of one per CTA, every other wave in reverse CTA order (a snake), so that items
  sorted longest first give every CTA about the same work (plain round robin gave the
  first CTAs a longer item in every wave: 10% slower at H=128, T=16k causal on an H200).
  """
  cta, ctas = lax.axis_index("cta"), lax.axis_size("cta")

  def place(wave):  # the position of this CTA in a wave
    return jnp.where(lax.rem(wave, 2) == 0, cta, ctas - 1 - cta)

  waves, rest = num_items // ctas, num_items % ctas
  local_count = waves + jnp.where(place(jnp.int32(waves)) < rest, 1, 0).astype(jnp.int32)
  return local_count, lambda k: k * ctas + place(k)


#: Bytes of streamed operands that the (batch, head) pairs running at once may share
#: in L2 (H100/H200: 50 MiB in two halves). 12 MiB measured best of 12, 24 and all.
L2_BUDGET = 12 * 2**20
#: Row blocks up to which the causal work of a persistent launch runs in L2 sections
#: (see :func:`l2_group`).
L2_SECTION_ROWS = 32


def l2_group(bytes_per_pair: int, pairs: int, rows: int, ctas: int | None = None) -> int:
  """The (batch, head) pairs per section of causal work (:func:`work_item`): about as
  many as fit their streamed operands (`bytes_per_pair` each) in :data:`L2_BUDGET`;
  in a persistent launch (`ctas` given) only for grids of at most
  :data:`L2_SECTION_ROWS` row blocks, else all `pairs` (no sections).

  Measured on an H200, causal, bf16 (BUILD_NOTES, issue 10 sessions 3 and 9): at
  T <= 4k each pair's rows are too few for the CTAs running at once to share its K/V,
  and sections of 12 MiB ran the forward 1.04-1.19x. At T = 16k (128 row blocks, 8 MiB
  per pair at H=128) a section is one pair: in the persistent forward its longest-first
  rows no longer balance the snake deal (0.68x), but with one CTA per item, which the
  hardware hands out as SMs free up, such sections ran the backward kernels 1.01-1.04x
  and the forward up to 1.03x (the rows of all pairs at once spread the CTAs running
  together over every pair's operands, more than L2 holds).

  `ctas`: the CTAs of a persistent launch, which deals the items in a snake
  (:func:`work_items`). Several sections make the item lengths a sawtooth that the
  snake does not balance (the gpt2-small LM's attention, 96 pairs of 16 rows on 132
  CTAs: the busiest CTA gets 1.23x the mean work with sections of 24 pairs). With
  `ctas`, where the L2 fit deals more than 2% worse than the best section size from
  half to twice it (:func:`deal_imbalance`), that size (the nearest to the fit at equal
  balance, to 1%): 33 pairs there, 1.01x.
  """
  if ctas is not None and rows > L2_SECTION_ROWS:
    return pairs
  fit = max(1, min(pairs, L2_BUDGET // max(1, bytes_per_pair)))
  if ctas is None or fit == pairs:
    return fit
  imbalance = {g: deal_imbalance(pairs, rows, ctas, g)
               for g in range(max(1, fit // 2), min(pairs, 2 * fit) + 1)}
  best = min(imbalance, key=lambda g: (round(imbalance[g], 2), abs(g - fit)))
  return best if imbalance[fit] - imbalance[best] > 0.02 else fit


def deal_imbalance(pairs: int, rows: int, ctas: int, group: int) -> float:
  """Busiest CTA's work over the mean, for causal items in sections of `group` pairs
  (rows longest first, row r costing r + 1 tiles) dealt as :func:`work_items` does."""
  sizes = [min(group, pairs - start) for start in range(0, pairs, group)]
  lengths = np.concatenate([np.repeat(np.arange(rows, 0, -1), size) for size in sizes])
  wave, position = np.divmod(np.arange(lengths.size), ctas)
  cta = np.where(wave % 2 == 0, position, ctas - 1 - position)
  load = np.bincount(cta, weights=lengths, minlength=ctas)
  return float(load.max() / load.mean())


def work_item(w, *, rows: int, heads: int, batch: int, row_major: bool, reverse: bool,
              group: int | None = None):
  """(row, head, batch) of work item `w` over a (rows, heads, batch) grid.

  `row_major` (for causal masks, whose row lengths differ): the items run in sections
  of `group` (batch, head) pairs (default: all), and within a section row by row,
  longest first (`reverse` if the last rows are the longest). So the CTAs running at
  once stream the K/V (or Q/dO) of a few pairs, which stay in L2, as FlashAttention-3's
  LPT scheduler does. Else the rows of one (batch, head) are consecutive items, which
  run at the same time and share its K/V (or Q/dO) in L2.
  """
  if row_major:
    pairs = heads * batch
    group = min(group or pairs, pairs)
    section, rest = lax.div(w, rows * group), lax.rem(w, rows * group)
    size = jnp.minimum(group, pairs - section * group)  # the last section may be smaller
    row, pair = lax.div(rest, size), section * group + lax.rem(rest, size)
    return (rows - 1 - row if reverse else row), lax.rem(pair, heads), lax.div(pair, heads)
  bh = lax.div(w, jnp.int32(rows))
  return lax.rem(w, jnp.int32(rows)), lax.rem(bh, heads), lax.div(bh, heads)


def compiler_params():
  return plgpu.CompilerParams(approx_math=True,
                              lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def interpret_params():
  """Mosaic GPU interpret mode with race detection (jax's private module, 0.11)."""
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # pylint: disable=g-import-not-at-top
  return InterpretGPUParams(detect_races=True)


#: Named (hardware) barrier ids free for the kernels: Mosaic GPU uses 0 (the CTA) and
#: 1-3 (one per warpgroup); Hopper has 16.
NAMED_BARRIER_IDS = range(4, 16)
WARPGROUP = 128  # threads


def named_barrier_ids(*counts: int) -> list[int]:
  """The first named barrier id of each of consecutive blocks of `counts` ids."""
  firsts, nxt = [], NAMED_BARRIER_IDS.start
  for n in counts:
    firsts.append(nxt)
    nxt += n
  if nxt > NAMED_BARRIER_IDS.stop:
    raise ValueError(f"{sum(counts)} named barriers asked for {counts}; "
                     f"{len(NAMED_BARRIER_IDS)} are free")
  return firsts


def _bar(op: str, barrier_id, threads: int) -> None:
  """PTX ``bar.{op} barrier_id, threads`` by every thread of the calling warpgroup."""
  if isinstance(barrier_id, int):
    plgpu.inline_mgpu()(lambda _: mgpu.utils.inline_ptx(
        f"bar.{op} {barrier_id}, {threads};", has_side_effects=True, convergent=True))()
    return

  @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WG_SPLAT,))
  def dynamic(_, i):
    mgpu.utils.inline_ptx(f"bar.{op} $0, {threads};", i.registers[()],
                          has_side_effects=True, convergent=True)

  dynamic(barrier_id)


@dataclasses.dataclass(frozen=True)
class Signal:
  """One-way signals from `arrivers` warpgroups to `waiters` warpgroups, one per slot.

  Each :meth:`arrive` of every arriver is matched by one :meth:`wait` of every waiter, in
  order. Natively they are named barriers (``bar.arrive`` / ``bar.sync`` over the
  arrivers' and waiters' threads, ids ``first_id + slot``): hardware counters, which
  FlashAttention-3 and tokamax use for these signals, where an mbarrier costs every
  thread an atomic arrive or a polling wait. With ``first_id=None`` (the interpretable
  form, which Mosaic GPU's interpret mode race-checks) they are the mbarriers
  `barrier` (``num_arrivals=arrivers``), in the same order.

  A named barrier counts arrivals, not phases: an arriver must not arrive on a slot
  again before the waiters have waited for its previous arrival there (the kernels'
  protocols guarantee it; see the forward's turn signals).
  """

  barrier: Any  # plgpu.Barrier ref, [slots]
  first_id: int | None
  arrivers: int = 1
  waiters: int = 1

  @property
  def threads(self) -> int:
    return (self.arrivers + self.waiters) * WARPGROUP

  def arrive(self, slot: Index = 0) -> None:
    if self.first_id is None:
      plgpu.barrier_arrive(self.barrier.at[slot])
    else:
      _bar("arrive", self.first_id + slot, self.threads)

  def wait(self, slot: Index = 0) -> None:
    if self.first_id is None:
      plgpu.barrier_wait(self.barrier.at[slot])
    else:
      _bar("sync", self.first_id + slot, self.threads)


@dataclasses.dataclass(frozen=True)
class Stream:
  """Tiles that a producer warpgroup streams to the consumers through a ring.

  Each tile brings one buffer per operand into slot ``ring.slot(t)`` of `bufs`; operand
  n's TMA completes barrier ``full[n][slot]``, and the consumers release the slot once
  its last read is done (signal `free`, consumers to producer). Consumers must observe
  every tile, in order: a tile they do not compute is waited on and released
  (:meth:`skip`).
  """

  bufs: tuple[Any, ...]
  full: tuple[Any, ...]
  free: Signal
  ring: Ring

  @classmethod
  def create(cls, bufs, full, free, *, stages: int, consumers: int, interpretable: bool):
    """The Stream over the scratch of :func:`stream_scratch` (`free`: its mbarriers,
    named barriers natively)."""
    first_id = None if interpretable else named_barrier_ids(stages)[0]
    return cls(bufs, full, Signal(free, first_id, arrivers=consumers), Ring(stages))

  def produce(self, count: Index, sources, base: Index = 0) -> Index:
    """Producer: loads tiles 0..count-1 as stream entries base, base + 1, ...;
    ``sources(t)`` gives tile t's GMEM refs (per operand). Returns base + count."""
    stages = self.ring.stages

    def load(t, _):
      slot = self.ring.slot(base + t)
      pl.when(base + t >= stages)(lambda: self.free.wait(slot))
      for src, buf, full in zip(sources(t), self.bufs, self.full):
        plgpu.copy_gmem_to_smem(src, buf.at[slot], full.at[slot])

    fori(0, count, load, None)
    return base + count

  def drain(self, total: Index) -> None:
    """Producer, at the end: observes the frees of the last entries before `total`
    (interpret mode checks that every barrier phase is waited on)."""
    fori(self.ring.drain_start(total), total,
         lambda t, _: self.free.wait(self.ring.slot(t)), None)

  def wait(self, t):
    """Consumer: waits until tile t is in shared memory; returns its buffers and slot."""
    slot = self.ring.slot(t)
    for full in self.full:
      plgpu.barrier_wait(full.at[slot])
    return tuple(buf.at[slot] for buf in self.bufs), slot

  def release(self, slot) -> None:
    self.free.arrive(slot)

  def skip(self, t, carry):
    """Consumer: lets tile t pass without computing on it."""
    _, slot = self.wait(t)
    self.release(slot)
    return carry


def stream_scratch(shapes, stages: int, consumers: int):
  """Scratch for a Stream: ([stages, *shape] buffers per (shape, dtype)), full, free."""
  bufs = tuple(smem((stages, *shape), dtype) if len(shape) == 2
               else plgpu.SMEM((stages, *shape), dtype) for shape, dtype in shapes)
  full = tuple(plgpu.Barrier(num_barriers=stages) for _ in shapes)
  return bufs, full, plgpu.Barrier(num_arrivals=consumers, num_barriers=stages)


def races_found() -> bool:
  """Whether Mosaic GPU's interpret mode has recorded a data race in this process."""
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks  # pylint: disable=g-import-not-at-top
  state = gpu_callbacks._races  # pylint: disable=protected-access; None before any kernel ran
  return state is not None and bool(state.races_found)


def _raise_on_races(*arrays):
  if races_found():
    raise RuntimeError("Mosaic GPU interpret mode detected a data race in a jflash kernel "
                       "(a kernel bug: please report it)")
  return arrays


def check_races(*arrays):
  """Interpret mode: once `arrays` (a kernel's outputs, and any arrays the next kernel
  reads) are computed, raises RuntimeError if the kernel raced; returns `arrays` again.

  The interpreter keeps the race record of the last kernel it ran only, so the check
  must run before the next kernel starts: that kernel must read the returned arrays."""
  return jax.pure_callback(_raise_on_races,
                           tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays),
                           *arrays, vmap_method="broadcast_all")
