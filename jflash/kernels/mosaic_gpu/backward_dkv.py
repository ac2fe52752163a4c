"""The dK/dV kernel of the Mosaic GPU backward (:mod:`.backward`, which launches it).

A CTA holds 2 * ``bwd_block_kv`` keys and values of one KV head (each consumer
warpgroup its own 64-row tiles; past H = 128 one tile shared by both, consumer 0
computing Pᵀ and dV, consumer 1 dPᵀ and dK) and streams the query tiles that see them,
for every query head of its GQA group, from a producer warpgroup: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ,
Pᵀ recomputed from lse, dSᵀ = Pᵀ (dPᵀ - delta), dV += Pᵀ dO, dK += dSᵀ Q
(FlashAttention-2's backward, Dao 2023, Algorithm 2, the dK/dV half). With `fused`
(deterministic=False) it also adds dQ = dS K by fp32 TMA reduce-adds
(:func:`.backward_steps.dq_share`, FlashAttention-3's backward).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.kernels.mosaic_gpu import backward_steps as steps, common, variants
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

CONSUMERS, WGMMA = steps.CONSUMERS, steps.WGMMA


def dkv_kernel(*refs, names: tuple[str, ...], scale: float, spec: MaskSpec,
                score_mod: ScoreMod, block_q: int, block_kv: int, stages: int, groups: int,
                rows: int, heads: int, batch: int, interpretable: bool, split: bool,
                fused: str | None, overlap: bool, l2_group: int):
  # k, v, dk, dv: [B, Sp, K, H]; q, do: [B, Tp, N, H]; lse2, delta: [B, N, Tp];
  # interpretable form: also qt, dot [B, N, H, Tp] (Qᵀ, dOᵀ). With `split` (H > 128,
  # where dK and dV of 64 rows do not both fit one warpgroup's registers) the two
  # consumers share one key tile: consumer 0 computes Pᵀ and dV, consumer 1 dPᵀ and dK
  # (two products each), Pᵀ handed over in fp32 through shared memory (the last two
  # scratch entries: [2 slots, keys, queries] and their barriers). Then the
  # variants' inputs (`names`). `heads` are the K key/value heads. With `fused` (how the
  # consumers share dQ, one of backward_steps.DQ_SHARES), a zeroed fp32 dQ accumulator
  # ref follows, [B, Tp, N, H] (interpretable form: one per consumer and key row block,
  # [rows * 2, B, Tp, N, H]), and the dS, dQ buffers and a barrier end the scratch.
  n_in = 8 if interpretable else 6
  k_ref, v_ref, q_ref, do_ref, *rest = refs[:n_in]
  qt_ref, dot_ref = rest[:2] if interpretable else (None, None)
  lse_ref, delta_ref = rest[-2:]
  ex, rest = variants.split(refs[n_in:], names)
  dq_acc, rest = (rest[0], rest[1:]) if fused else (None, rest)
  dk_ref, dv_ref, own, own_bars, bufs, full, free, p_smem, done, *share_scratch = rest
  k_smem, v_smem = own
  wg = lax.axis_index("wg")
  extents = (q_ref.shape[1], k_ref.shape[1])  # padded T, S
  rows_per_cta = block_kv if split else CONSUMERS * block_kv
  local_items, item_index = common.work_items(rows * heads * batch)  # persistent
  stream = common.Stream.create(bufs, full, free, stages=stages, consumers=CONSUMERS,
                               interpretable=interpretable)

  def item(k):
    """(kv head, b, first key row, positions, schedule) of the CTA's k-th work item.

    Causal: the first key rows are seen by the most queries; they go first (in L2
    sections of (batch, KV head) pairs, see backward())."""
    jc, kv_head, b = common.work_item(item_index(k), rows=rows, heads=heads, batch=batch,
                                      row_major=spec.is_causal, reverse=False,
                                      group=l2_group)
    pos = ex.positions(spec, b)
    cta_start = jc * rows_per_cta
    return kv_head, b, cta_start, pos, variants.schedule_of(
        spec, ex, pos, b=b, row=jc, start=cta_start, rows=rows_per_cta, cols=block_q,
        transpose=True)

  def sync_consumers():
    plgpu.barrier_arrive(done)
    plgpu.barrier_wait(done)

  def consume_item(base, kv_head, b, cta_start, pos, sched):
    """One consumer's work on a work item whose stream entries start at `base`."""
    n = sched.count  # query tiles per head
    own_slot = 0 if split else wg
    kv_start = cta_start + (0 if split else wg * block_kv)
    kv_rows = pl.ds(kv_start, block_kv)
    k_tile, v_tile = k_smem.at[own_slot], v_smem.at[own_slot]
    # The last item's dK/dV stores read k_tile and v_tile (both consumers', if split).
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    if split:  # consumer 0 loads the shared tiles; both wait for them
      sync_consumers()

      @pl.when(wg == 0)
      def _load():
        plgpu.copy_gmem_to_smem(k_ref.at[b, kv_rows, kv_head], k_tile, own_bars[0].at[0])
        plgpu.copy_gmem_to_smem(v_ref.at[b, kv_rows, kv_head], v_tile, own_bars[1].at[0])

      for bar in own_bars:
        plgpu.barrier_wait(bar.at[0])
    else:
      steps.load_own([(k_ref.at[b, kv_rows, kv_head], k_tile),
                 (v_ref.at[b, kv_rows, kv_head], v_tile)], own_bars, wg)
    shape = (block_kv, block_q)
    mine = variants.own_tiles(spec, sched, pos, kv_start, block_kv, block_q, transpose=True)
    if fused:  # both consumers take every tile of the CTA, to exchange dS
      mine = sched.cta
    a_smem = p_smem.at[wg] if interpretable else None
    kv_seg = (ex.segment_ids("kv_seg", b, kv_start, block_kv, 0) if spec.segment_ids else None)
    writer = lax.div(cta_start, jnp.int32(rows_per_cta)) * CONSUMERS + wg  # interpretable

    def one_head(g, carry, does_dk: bool, does_dv: bool):

      def step(t, i, carry, masked):
        tiles, slot = stream.wait(t)
        # The own tiles' descriptors are formed in the step, not kept live across the loop.
        k_tile, v_tile = (x.at[common.opaque(own_slot)] for x in (k_smem, v_smem))
        if interpretable:
          q_tile, do_tile, q_t, do_t, lse_tile, delta_tile = tiles
        else:
          q_tile, do_tile, lse_tile, delta_tile = tiles
          q_t, do_t = q_tile.T, do_tile.T
        # lse, delta, the positions and the mask are formed where they are used, after
        # the product before them: formed at the step's start they stay live across it
        # (16 + 16 registers a thread for lse and delta, 32 for the mask).
        lse2 = lambda: plgpu.load(lse_tile, layout=WGMMA.reduce(0))
        delta = lambda: plgpu.load(delta_tile, layout=WGMMA.reduce(0))

        def mask():
          kv_pos, q_pos = common.positions(kv_start, i * block_q, shape)
          return variants.visible(ex, spec, pos, b, q_pos, kv_pos, kv_seg, i * block_q, 1,
                                  extents)

        visible = mask if masked else None
        # Accumulators: the carry (dV if does_dv, then dK if does_dk), Sᵀ, then dPᵀ
        # (`split`: the carry, then Sᵀ for consumer 0 or dPᵀ for consumer 1).
        dv_i, dk_i = 0, len(carry) - 1
        s_i, dp_i = len(carry), len(carry) + 1

        def split_products(mm):
          # Consumer 0 (dV): Sᵀ, Pᵀ (times dz/ds with soft-cap) to consumer 1, dV += Pᵀ dO.
          # Consumer 1 (dK): dPᵀ, then dSᵀ from consumer 0's Pᵀ, dK += dSᵀ Q.
          fresh_i = len(carry)
          if does_dv:
            mm.mma(fresh_i, k_tile, q_t)
            p_t, dz = steps.probabilities(mm.get(fresh_i, wait_n=0), lse2(), scale=scale,
                                          score_mod=score_mod, lse_dim=1, visible=visible)
            steps.hand_over(*share_scratch, t, p_t if dz is None else p_t * dz)
            mm.mma(dv_i, p_t.astype(q_ref.dtype), do_tile)
            return
          mm.mma(fresh_i, v_tile, do_t)
          dp_t = mm.get(fresh_i, wait_n=0)
          pz_t = steps.hand_over(*share_scratch, t)
          ds_t = steps.score_grads(pz_t, dp_t, delta(), None, 1).astype(q_ref.dtype)
          mm.mma(dk_i, ds_t, q_tile)

        def products(mm):
          # With `overlap`, Sᵀ and dPᵀ go to the tensor cores together; Pᵀ is computed
          # while dPᵀ runs, and dSᵀ while dV += Pᵀ dO runs. dK += dSᵀ Q is awaited at
          # the step's end.
          mm.mma(s_i, k_tile, q_t)
          if overlap and does_dk:
            mm.mma(dp_i, v_tile, do_t)
          p_t, dz = steps.probabilities(mm.get(s_i, wait_n=int(does_dk)), lse2(), scale=scale,
                                        score_mod=score_mod, lse_dim=1, visible=visible)
          if does_dv:
            mm.mma(dv_i, p_t.astype(q_ref.dtype), do_tile)
          if not does_dk:
            return
          if not overlap:
            mm.mma(dp_i, v_tile, do_t)
          dp_t = mm.get(dp_i, wait_n=int(does_dv))
          ds_t = steps.score_grads(p_t, dp_t, delta(), dz, 1).astype(q_ref.dtype)
          mm.mma(dk_i, ds_t, q_tile)
          if fused:
            at = (b, pl.ds(i * block_q, block_q), kv_head * groups + g)
            steps.dq_share(ds_t, wg, t, k_smem, *share_scratch,
                           dq_out=dq_acc.at[(writer, *at) if interpretable else at],
                           mode=fused, interpretable=interpretable)

        if split:
          out = steps.pipelined(split_products, carry, [shape], asynchronous=False,
                                a_smem=a_smem)
        else:
          out = steps.pipelined(products, carry, [shape] * (1 + does_dk),
                                asynchronous=overlap and not interpretable, a_smem=a_smem)
        stream.release(slot)
        return tuple(out)

      return sched.consume(mine, step, stream.skip, carry, base=base + g * n)

    zeros = plgpu.layout_cast(jnp.zeros(k_tile.shape, jnp.float32), WGMMA)
    dk_out, dv_out = dk_ref.at[b, kv_rows, kv_head], dv_ref.at[b, kv_rows, kv_head]
    heads_loop = lambda **does: lax.fori_loop(0, groups, functools.partial(one_head, **does),
                                              (zeros,) * len([d for d in does.values() if d]))
    if not split:
      dv, dk = heads_loop(does_dk=True, does_dv=True)
      if fused:  # the other consumer may still read this one's K in its last dQ
        sync_consumers()
      steps.store_own([((dk * scale).astype(k_ref.dtype), k_tile, dk_out),
                  (dv.astype(k_ref.dtype), v_tile, dv_out)])
      return base + groups * n

    @pl.when(wg == 0)
    def _dv():
      (dv,) = heads_loop(does_dk=False, does_dv=True)
      sync_consumers()  # the other consumer still reads K and V: wait for it
      steps.store_own([(dv.astype(k_ref.dtype), v_tile, dv_out)])

    @pl.when(wg == 1)
    def _dk():
      (dk,) = heads_loop(does_dk=True, does_dv=False)
      sync_consumers()
      steps.store_own([((dk * scale).astype(k_ref.dtype), k_tile, dk_out)])

    return base + groups * n

  def produce_item(k, base):
    kv_head, b, _, _, sched = item(k)
    n = sched.count

    def sources(t):
      per_head = jnp.asarray(n, jnp.int32)
      g, i = lax.div(t, per_head), sched.tile(lax.rem(t, per_head))
      head = kv_head * groups + g
      q_rows = pl.ds(i * block_q, block_q)
      tiles = [q_ref.at[b, q_rows, head], do_ref.at[b, q_rows, head]]
      if interpretable:
        tiles += [qt_ref.at[b, head, :, q_rows], dot_ref.at[b, head, :, q_rows]]
      return (*tiles, lse_ref.at[b, head, q_rows], delta_ref.at[b, head, q_rows])

    return stream.produce(groups * n, sources, base)

  steps.run_items(wg, CONSUMERS, local_items, item, consume_item, produce_item, stream)
