"""Forward attention kernel: Pallas Mosaic GPU (Hopper, sm90a).

FlashAttention-3 (Shah et al. 2024) layout: one CTA per 2 * ``block_q`` query rows and
(head, batch), three warpgroups:

* a producer warpgroup (few registers) streams the key and value tiles the CTA sees
  through a ring of ``num_stages`` shared-memory slots with TMA, each slot guarded by a
  "full" barrier (TMA completion) and a "free" signal (both consumers are done);
* two consumer warpgroups (the rest of the registers) each keep ``block_q`` query rows
  and run the online softmax of FlashAttention-2 (base 2, row max pre-scaled) on
  wgmma tiles; "turn" signals make them take turns on the tensor cores (ping-pong: a
  consumer's PV product waits until the other has issued its next QKᵀ), so one's
  softmax overlaps the other's matrix multiplies.

The signals between warpgroups are named barriers natively (:class:`.common.Signal`),
mbarriers in the interpretable form.

Positional masks (causal, window, ``q_offset``, lengths; static or per batch element)
bound each row's key tiles with :meth:`jflash.masks.MaskSpec.kv_tiles`; only the tiles
that straddle the mask edge are masked. The two consumers' ranges differ near the
diagonal: each walks the CTA's whole range so that every barrier phase is observed, and
skips the tiles outside its own. With segment ids the CTA streams its tile list instead
(:mod:`.variants`), full tiles first, and both consumers compute every listed tile.

One body serves two forms. The native form reads Kᵀ through a transposed view of the
key tile and feeds P to the PV wgmma from registers. The interpretable form, which
Mosaic GPU's interpret mode (jax 0.11) can run with race detection on a CPU, takes Kᵀ
pre-transposed from XLA and routes P through shared memory; the barrier, ring and mask
logic are the same code.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.backends import Operands
from jflash.kernels.mosaic_gpu import common, variants
from jflash.kernels.mosaic_gpu.config import MosaicGpuConfig, forward_q_buffers
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
CONSUMERS = 2  # consumer warpgroups per CTA; the producer is warpgroup CONSUMERS



#: Head dims (padded) whose causal forward runs in L2 sections (:func:`.common.l2_group`):
#: on an H200 (issue 10 sessions 3-4) sections ran it 1.04-1.19x at H = 64, 128, 256 but
#: 0.61-0.74x at H = 96 and 192 (T = 2k, 4k; not understood: their rows are not a power
#: of two bytes).
L2_SECTION_HEAD_DIMS = (64, 128, 256)


def _forward_kernel(*refs, names: tuple[str, ...], scale: float, spec: MaskSpec,
                    score_mod: ScoreMod, block_q: int, block_kv: int, stages: int, groups: int,
                    num_q_ctas: int, heads: int, batch: int, q_bufs: int, overlap: bool,
                    interpretable: bool, l2_group: int):
  # q_ref, out_ref: [B, Tp, N, H]; k_ref: [B, Sp, K, H] (native) or Kᵀ [B, K, H, Sp]
  # (interpretable); v_ref: [B, Sp, K, H]; lse_ref: [B, N, Tp] float32; the variants'
  # extra inputs (`names`, see .variants) between v_ref and out_ref.
  q_ref, k_ref, v_ref = refs[:3]
  ex, rest = variants.split(refs[3:], names)
  (out_ref, lse_ref, q_smem, k_smem, v_smem, lse_smem, p_smem, q_full, k_full, v_full,
   k_free, v_free, turn) = rest
  # Signals between warpgroups: named barriers natively, mbarriers when interpretable.
  ids = [None] * 3 if interpretable else common.named_barrier_ids(4, stages, stages)
  # turn[2 * parity + c]: the other consumer to consumer c, in items of that parity
  turn = common.Signal(turn, ids[0])
  k_free, v_free = (common.Signal(bar, i, arrivers=CONSUMERS)
                    for bar, i in ((k_free, ids[1]), (v_free, ids[2])))
  # Persistent: each CTA runs several work items (one each when there are as many CTAs).
  local_items, item_index = common.work_items(num_q_ctas * heads * batch)
  wg = lax.axis_index("wg")
  extents = (q_ref.shape[1], v_ref.shape[1])  # padded T, S
  ring = common.Ring(stages)  # slots by stream entry, counted over all the CTA's items
  rows_per_cta = CONSUMERS * block_q

  def item(k):
    """(i, head, b, first query row, mask positions, schedule) of local item k."""
    i, head, b = common.work_item(item_index(k), rows=num_q_ctas, heads=heads, batch=batch,
                                  row_major=spec.is_causal, reverse=True, group=l2_group)
    pos = ex.positions(spec, b)
    start = i * rows_per_cta
    sched = variants.schedule_of(spec, ex, pos, b=b, row=i, start=start, rows=rows_per_cta,
                                 cols=block_kv)
    return head, b, start, pos, sched

  @pl.when(wg < CONSUMERS)
  def _consumer():
    plgpu.set_max_registers(232, action="increase")

    def load_q(k):  # TMA of local item k's query tile into its buffer
      head, b, start, _, _ = item(k)
      buf = lax.rem(k, jnp.int32(q_bufs))
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(start + wg * block_q, block_q), head],
                              q_smem.at[buf, wg], q_full.at[buf * CONSUMERS + wg])

    load_q(0)  # every CTA has an item (ctas <= items)

    def attend(q_tile, q_start, pos, sched, base, b, parity):
      """Online softmax over this item's stream entries (entries base, base + 1, ...
      of the CTA's stream; `q_tile()` gives the query tile's ref): (acc, m, l),
      acc unnormalised, m in base-2 units."""

      # Ping-pong (FlashAttention-3): a consumer's PV product waits until the other has
      # issued its next QKᵀ, so one's softmax runs while the other's products do.
      # Consecutive items use two sets of signals: a named barrier counts arrivals, not
      # phases, so consumer 0 must not pass the next item's turn into a barrier whose
      # last turn of this item consumer 1 has not taken yet; the other set makes that
      # impossible (consumer 0 takes a turn in between, which needs consumer 1 in the
      # next item).
      def your_turn():  # my QKᵀ is issued
        turn.arrive(2 * parity + 1 - wg)

      def my_turn():  # the other consumer's QKᵀ is issued: my PV may go
        turn.wait(2 * parity + wg)

      c = 1.0 if score_mod.active else scale * LOG2E  # logits -> base-2 exponents
      shape = (block_q, block_kv)
      q_seg = ex.segment_ids("q_seg", b, q_start, block_q, 0) if spec.segment_ids else None

      def visible(j):
        q_pos, kv_pos = common.positions(q_start, j * block_kv, shape)
        return variants.visible(ex, spec, pos, b, q_pos, kv_pos, q_seg, j * block_kv, 0,
                                extents)

      def softmax(s, m, l, j, masked):
        """(P in the input dtype, new m, new l, alpha) after raw scores s of key tile j."""
        if score_mod.active:  # soft-cap (the backend serves no ALiBi: no positions)
          s = score_mod.logits(s * scale) * LOG2E
        if masked:
          s = jnp.where(visible(j), s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=1) * c)
        # A row with nothing visible yet keeps m = -inf; exponentiate against 0 instead.
        m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
        alpha = jnp.exp2(m - m_use)
        p = jnp.exp2(s * c - lax.broadcast_in_dim(m_use, shape, [0]))
        return p.astype(q_ref.dtype), m_new, l * alpha + p.sum(axis=1), alpha

      def step(e, j, carry, masked):
        acc, m, l = carry
        slot = ring.slot(e)
        plgpu.barrier_wait(k_full.at[slot])
        k_t = k_smem.at[slot] if interpretable else k_smem.at[slot].T

        def qk(acc_ref):
          plgpu.wgmma(acc_ref, q_tile(), k_t)
          your_turn()
          return acc_ref[...]

        s = pl.run_scoped(qk, plgpu.ACC(shape, jnp.float32))
        k_free.arrive(slot)
        p, m_new, l, alpha = softmax(s, m, l, j, masked)
        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        plgpu.barrier_wait(v_full.at[slot])
        my_turn()
        if interpretable:
          p_tile = p_smem.at[wg]
          p_tile[...] = p
          plgpu.commit_smem()

          def pv(acc_ref):
            plgpu.wgmma(acc_ref, p_tile, v_smem.at[slot])
            return acc_ref[...]

          acc = acc + pl.run_scoped(pv, plgpu.ACC(acc.shape, jnp.float32))
        else:
          acc = pl.run_state(lambda acc_ref: plgpu.wgmma(acc_ref, p, v_smem.at[slot]))(
              plgpu.ACC.init(acc))
        v_free.arrive(slot)
        return acc, m_new, l

      def skip(e, carry):  # a tile of the CTA that this consumer's rows do not see
        slot = ring.slot(e)
        plgpu.barrier_wait(k_full.at[slot])
        your_turn()
        k_free.arrive(slot)
        plgpu.barrier_wait(v_full.at[slot])
        my_turn()
        v_free.arrive(slot)
        return carry

      row = plgpu.Layout.WGMMA.reduce(1)
      acc = jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32)
      carry = (plgpu.layout_cast(acc, plgpu.Layout.WGMMA),
               plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32), row),
               plgpu.layout_cast(jnp.zeros((block_q,), jnp.float32), row))
      pl.when(wg == 1)(my_turn)  # consumer 1 starts half a step behind
      mine = variants.own_tiles(spec, sched, pos, q_start, block_q, block_kv)
      # Stream entries are counted over the CTA's items: shift this item's by `base`.
      shifted_step = lambda e, j, carry, masked: step(base + e, j, carry, masked=masked)
      shifted_skip = lambda e, carry: skip(base + e, carry)
      full = None
      if overlap and not interpretable:
        # Fresh: the unmasked run comes first (tile lists; causal and plain ranges).
        fresh = sched.listed or (isinstance(mine.lo, int) and isinstance(mine.full_lo, int)
                                 and mine.lo == mine.full_lo)
        full = functools.partial(
            _overlapped, fresh=fresh, sched=sched, base=base, softmax=softmax, q_tile=q_tile, ring=ring,
            k_smem=k_smem, v_smem=v_smem, k_full=k_full, v_full=v_full, k_free=k_free,
            v_free=v_free, your_turn=your_turn, my_turn=my_turn, shape=shape)
      acc, m, l = sched.consume(mine, shifted_step, shifted_skip, carry, full=full)
      pl.when(wg == 0)(your_turn)  # consumer 1's last PV may go
      # An item without tiles: consumer 0 took no turn, so it waits for consumer 1 here.
      pl.when((wg == 1) & (sched.count == 0))(your_turn)
      pl.when((wg == 0) & (sched.count == 0))(my_turn)
      return acc, m, l

    def one_item(k, base):
      head, b, cta_start, pos, sched = item(k)
      buf = lax.rem(k, jnp.int32(q_bufs))
      q_start = cta_start + wg * block_q
      q_tile = q_smem.at[buf, wg]
      # The query tile as the steps address it. Past H = 128 its wgmma descriptors (16
      # per product), hoisted out of the key loop by LLVM, stay live and spill (40-80
      # bytes); indexed through common.opaque they are formed in each step.
      opaque = common.opaque if q_smem.shape[-1] > 128 else (lambda i: i)
      q_at = lambda: q_smem.at[opaque(buf), opaque(wg)]
      # The previous item's output stores read the shared memory this one reuses.
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)
      if q_bufs == 1:
        pl.when(k > 0)(lambda: load_q(k))
      else:  # prefetch the next item's queries while this one runs
        pl.when(k + 1 < local_items)(lambda: load_q(k + 1))
      plgpu.barrier_wait(q_full.at[buf * CONSUMERS + wg])
      acc, m, l = attend(q_at, q_start, pos, sched, base, b, lax.rem(k, 2))
      # A row that saw no key, or a padding row (q_lengths): out = 0, lse = -inf.
      empty = l == 0.0
      if spec.q_lengths:
        rows = q_start + plgpu.broadcasted_iota(jnp.int32, (block_q,), 0,
                                                layout=plgpu.Layout.WGMMA.reduce(1))
        empty = empty | (rows >= pos.q_len)
      inv = jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
      q_tile[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(q_ref.dtype)
      lse_smem.at[wg][...] = jnp.where(empty, -jnp.inf, (m + jnp.log2(l)) * LN2)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_tile, out_ref.at[b, pl.ds(q_start, block_q), head])
      plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, head, pl.ds(q_start, block_q)])
      return base + sched.count

    lax.fori_loop(0, local_items, one_item, jnp.int32(0))
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == CONSUMERS)
  def _producer():
    plgpu.set_max_registers(40, action="decrease")

    def one_item(k, base):
      head, b, _, _, sched = item(k)
      kv_head = lax.div(head, jnp.int32(groups))

      def load(e, _):
        slot = ring.slot(base + e)
        rows = pl.ds(sched.tile(e) * block_kv, block_kv)
        later = base + e >= stages  # the slot held an earlier entry: wait until it is free
        pl.when(later)(lambda: k_free.wait(slot))
        k_tile = k_ref.at[b, kv_head, :, rows] if interpretable else k_ref.at[b, rows, kv_head]
        plgpu.copy_gmem_to_smem(k_tile, k_smem.at[slot], k_full.at[slot])
        pl.when(later)(lambda: v_free.wait(slot))
        plgpu.copy_gmem_to_smem(v_ref.at[b, rows, kv_head], v_smem.at[slot], v_full.at[slot])

      count = sched.count
      common.fori(0, count, load, None)
      return base + count

    total = lax.fori_loop(0, local_items, one_item, jnp.int32(0))

    def drain(e, _):  # observe the last frees too: every barrier phase is waited on
      k_free.wait(ring.slot(e))
      v_free.wait(ring.slot(e))

    common.fori(ring.drain_start(total), total, drain, None)


def _overlapped(c_lo, c_hi, carry, *, fresh, sched, base, softmax, q_tile, ring, k_smem, v_smem,
                k_full, v_full, k_free, v_free, your_turn, my_turn, shape):
  """A consumer's unmasked stream entries [c_lo, c_hi) with its softmax overlapping its
  own matrix multiplies (`q_tile()`: the query tile's ref).

  FlashAttention-3's intra-warpgroup pipelining (Shah et al. 2024, Algorithm 2): step e
  issues Sₑ = Q Kₑᵀ and then O += Pₑ₋₁ Vₑ₋₁, waits only for Sₑ (`wait_n=1`), computes
  Pₑ while the PV product runs, then rescales O. The first entry only computes P, the
  last PV runs after the loop. The signals per tile are the plain step's (the turn
  passed and taken once, K and V released once), so the ping-pong between the
  consumers and the skip accounting are unchanged; the turn guards each issue that
  contains a PV. `fresh`: no tile comes before the run (O is still 0).

  Only the unmasked run is pipelined, and the pipeline starts and drains inside it:
  the masked tiles around it take the plain step. Carrying P from one loop into
  another (e.g. full tiles, then masked ones) made ptxas serialise every wgmma of the
  kernel (C7513, "non wgmma instructions defining input registers of a wgmma") and ran
  causal attention at 0.5-0.6x the plain loop on an H200 (BUILD_NOTES, issue 10
  session 6). An empty run at run time is skipped by a `lax.cond`.
  """

  def first(c, carry):
    o, m, l = carry
    slot = ring.slot(base + c)
    plgpu.barrier_wait(k_full.at[slot])

    def qk(s_ref):
      plgpu.wgmma(s_ref, q_tile(), k_smem.at[slot].T)
      your_turn()
      return s_ref[...]

    s = pl.run_scoped(qk, plgpu.ACC(shape, jnp.float32))
    k_free.arrive(slot)
    p, m, l, alpha = softmax(s, m, l, sched.tile(c), False)
    if not fresh:  # masked tiles may have come before
      o = o * lax.broadcast_in_dim(alpha, o.shape, [0])
    my_turn()
    return o, m, l, p

  def step(c, state):
    o, m, l, p_prev = state
    slot, prev = ring.slot(base + c), ring.slot(base + c - 1)
    plgpu.barrier_wait(k_full.at[slot])
    plgpu.barrier_wait(v_full.at[prev])

    def gemms(refs):
      o_ref, m_ref, l_ref, p_ref, alpha_ref = refs

      def with_s(s_ref):
        plgpu.wgmma(s_ref, q_tile(), k_smem.at[slot].T)
        plgpu.wgmma(o_ref, p_prev, v_smem.at[prev])
        your_turn()
        s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)  # Sₑ; the PV still runs
        k_free.arrive(slot)
        p, m_new, l_new, alpha = softmax(s, m_ref[...], l_ref[...], sched.tile(c), False)
        m_ref[...], l_ref[...], p_ref[...], alpha_ref[...] = m_new, l_new, p, alpha

      pl.run_scoped(with_s, plgpu.ACC(shape, jnp.float32))

    o, m, l, p, alpha = pl.run_state(gemms)((plgpu.ACC.init(o), m, l, p_prev, m))
    v_free.arrive(prev)
    o = o * lax.broadcast_in_dim(alpha, o.shape, [0])
    my_turn()  # the next issue holds a PV
    return o, m, l, p

  def last(c, state):
    o, m, l, p = state
    slot = ring.slot(base + c)
    plgpu.barrier_wait(v_full.at[slot])
    o = pl.run_state(lambda o_ref: plgpu.wgmma(o_ref, p, v_smem.at[slot]))(plgpu.ACC.init(o))
    v_free.arrive(slot)
    return o, m, l

  def run(carry):
    state = common.fori(c_lo + 1, c_hi, step, first(c_lo, carry))
    return last(c_hi - 1, state)

  if isinstance(c_lo, int) and isinstance(c_hi, int):
    return run(carry) if c_hi > c_lo else carry
  return lax.cond(c_hi > c_lo, run, lambda carry: carry, carry)


def forward(q, k, v, operands: Operands = Operands(), *, scale: float, spec: MaskSpec,
            score_mod: ScoreMod, config: MosaicGpuConfig, interpret: bool = False,
            interpretable: bool | None = None):
  """Attention forward pass on a Hopper GPU (or Mosaic GPU interpret mode).

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; bfloat16 or float16, N % K == 0, H <= 256.
    operands: the runtime operands of the variants (positions, segment ids).
    scale: multiplies q.k before the softmax.
    spec, score_mod: the mask and score modification (positional masks and soft-cap).
    config: `block_q`, `block_kv`, `num_stages`, `persistent` are used.
    interpret: run in Mosaic GPU interpret mode with race detection (CPU).
    interpretable: use the interpretable form (default: with `interpret`); the native
      GPU runs it too, which tests check.

  Returns:
    (out [B, T, N, H] in q.dtype, lse [B, T, N] float32, natural log); a query row
    that sees no key gets out 0 and lse -inf.
  """
  interpretable = interpret if interpretable is None else interpretable
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  block_q, block_kv, stages = config.block_q, config.block_kv, config.num_stages
  rows_per_cta = CONSUMERS * block_q
  q, k, v = common.pad_inputs(q, k, v, rows_per_cta, block_kv)
  t_pad, s_pad, h_pad = q.shape[1], k.shape[1], q.shape[3]
  num_q_ctas = t_pad // rows_per_cta
  if interpretable:
    k = jnp.transpose(k, (0, 2, 3, 1))  # Kᵀ [B, K, H, Sp]
  extras, names = variants.inputs(spec, operands, batch=b, t_pad=t_pad, s_pad=s_pad,
                                  rows=rows_per_cta, cols=block_kv)
  dtype = q.dtype
  q_bufs = forward_q_buffers(config, h_pad, jnp.dtype(dtype).itemsize)
  num_items = num_q_ctas * n * b
  ctas = common.num_ctas(num_items, config.persistent, interpret)
  smem = functools.partial(common.smem, dtype=dtype)
  scratch = [
      smem((q_bufs, CONSUMERS, block_q, h_pad)),
      smem((stages, h_pad, block_kv) if interpretable else (stages, block_kv, h_pad)),
      smem((stages, block_kv, h_pad)),
      plgpu.SMEM((CONSUMERS, block_q), jnp.float32),
      smem((CONSUMERS, block_q, block_kv)) if interpretable else None,
      plgpu.Barrier(num_barriers=q_bufs * CONSUMERS),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=stages),
      plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=stages),
      plgpu.Barrier(num_barriers=2 * CONSUMERS),
  ]
  kernel = functools.partial(
      _forward_kernel, names=names, scale=scale, spec=spec, score_mod=score_mod, block_q=block_q,
      block_kv=block_kv, stages=stages, groups=n // kv_heads, num_q_ctas=num_q_ctas,
      heads=n, batch=b, q_bufs=q_bufs, overlap=config.overlap, interpretable=interpretable,
      l2_group=common.l2_group(2 * s_pad * h_pad * jnp.dtype(dtype).itemsize, n * b,
                               num_q_ctas, ctas if config.persistent else None)
      if h_pad in L2_SECTION_HEAD_DIMS else n * b)
  out, lse = plgpu.kernel(
      kernel,
      out_type=[jax.ShapeDtypeStruct(q.shape, dtype),
                jax.ShapeDtypeStruct((b, n, t_pad), jnp.float32)],
      scratch_types=scratch,
      grid=(ctas,),
      grid_names=("cta",),
      num_threads=CONSUMERS + 1,
      thread_name="wg",
      compiler_params=common.compiler_params(),
      interpret=common.interpret_params() if interpret else None,
      kernel_name="jflash_mgpu_fwd",
  )(q, k, v, *extras)
  if interpret:
    out, lse = common.check_races(out, lse)
  return out[:, :t, :, :h], jnp.transpose(lse[:, :, :t], (0, 2, 1))
