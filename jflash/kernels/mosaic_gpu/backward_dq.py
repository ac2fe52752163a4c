"""The dQ kernel of the Mosaic GPU backward (:mod:`.backward`, which launches it).

A CTA holds ``consumers * bwd_block_q`` queries of one head (each consumer warpgroup its
own 64-row tiles of Q, dO, lse and delta) and streams the key/value tiles they see from a
producer warpgroup: S = Q Kᵀ, dP = dO Vᵀ, P recomputed from lse, dS = P (dP - delta),
dQ += dS K (FlashAttention-2's backward, Dao 2023, Algorithm 2, the dQ half). No CTA
writes what another accumulates, so dQ is bitwise reproducible.

With `split` (H = 256, where two consumers' own Q and dO tiles and the K/V ring overflow
shared memory) the two consumers share one query tile: consumer 0 computes S and P and
hands P (fp32) to consumer 1 through shared memory (two slots by entry parity), while
consumer 1 computes dP; consumer 1 then forms dS and accumulates dQ += dS K.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.kernels.mosaic_gpu import backward_steps as steps, common, variants
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

WGMMA = steps.WGMMA


def dq_kernel(*refs, names: tuple[str, ...], scale: float, spec: MaskSpec,
               score_mod: ScoreMod, block_q: int, block_kv: int, stages: int, groups: int,
               rows: int, heads: int, batch: int, interpretable: bool, consumers: int,
               l2_group: int, overlap: bool, split: bool = False):
  # q, do, dq: [B, Tp, N, H]; lse2, delta: [B, N, Tp]; k, v: [B, Sp, K, H]; interpretable
  # form: kt, vt [B, K, H, Sp] (Kᵀ, Vᵀ) instead of v; then the variants' inputs (`names`).
  n_in = 7 if interpretable else 6
  q_ref, do_ref, lse_ref, delta_ref, *kv_refs = refs[:n_in]
  ex, rest = variants.split(refs[n_in:], names)
  dq_ref, own, own_bars, bufs, full, free, ds_smem, *shared = rest
  q_smem, do_smem, lse_smem, delta_smem = own
  wg = lax.axis_index("wg")
  extents = (q_ref.shape[1], kv_refs[0].shape[1])  # padded T, S
  local_items, item_index = common.work_items(rows * heads * batch)  # persistent
  stream = common.Stream.create(bufs, full, free, stages=stages, consumers=consumers,
                               interpretable=interpretable)

  def item(k):
    """(head, b, first query row, positions, schedule) of the CTA's k-th work item."""
    i, head, b = common.work_item(item_index(k), rows=rows, heads=heads, batch=batch,
                                  row_major=spec.is_causal, reverse=True, group=l2_group)
    pos = ex.positions(spec, b)
    rows_per_cta = block_q if split else consumers * block_q
    cta_start = i * rows_per_cta
    return head, b, cta_start, pos, variants.schedule_of(
        spec, ex, pos, b=b, row=i, start=cta_start, rows=rows_per_cta, cols=block_kv)

  def sync_consumers():
    done = shared[-1]
    plgpu.barrier_arrive(done)
    plgpu.barrier_wait(done)

  def consume_item(base, head, b, cta_start, pos, sched):
    """One consumer's work on a work item whose stream entries start at `base`."""
    own_slot = 0 if split else wg
    q_start = cta_start + (0 if split else wg * block_q)
    rows_ = pl.ds(q_start, block_q)
    q_tile, do_tile = q_smem.at[own_slot], do_smem.at[own_slot]
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last item's dQ store read q_tile
    copies = [(q_ref.at[b, rows_, head], q_tile), (do_ref.at[b, rows_, head], do_tile),
              (lse_ref.at[b, head, rows_], lse_smem.at[own_slot]),
              (delta_ref.at[b, head, rows_], delta_smem.at[own_slot])]
    if split:  # consumer 0 loads the shared tiles once both are past the last item's
      sync_consumers()

      @pl.when(wg == 0)
      def _load():
        for (src, dst), bar in zip(copies, own_bars):
          plgpu.copy_gmem_to_smem(src, dst, bar.at[0])

      for bar in own_bars:
        plgpu.barrier_wait(bar.at[0])
    else:
      steps.load_own(copies, own_bars, wg)
    lse2 = plgpu.load(lse_smem.at[own_slot], layout=WGMMA.reduce(1))
    delta = plgpu.load(delta_smem.at[own_slot], layout=WGMMA.reduce(1))
    shape = (block_q, block_kv)
    q_seg = (ex.segment_ids("q_seg", b, q_start, block_q, 0) if spec.segment_ids else None)

    def step(e, j, dq, masked, role=None):
      tiles, slot = stream.wait(e)
      if interpretable:
        k_tile, k_t, v_t = tiles
      else:
        k_tile, v_tile = tiles
        k_t, v_t = k_tile.T, v_tile.T
      # The positions and the mask are formed where used, after S's product
      # (steps.probabilities), not live across it.
      def mask():
        q_pos, kv_pos = common.positions(q_start, j * block_kv, shape)
        return variants.visible(ex, spec, pos, b, q_pos, kv_pos, q_seg, j * block_kv, 0,
                                extents)

      visible = mask if masked else None

      def products(mm):  # accumulators: 0 dQ, 1 S, 2 dP
        mm.mma(1, q_tile, k_t)
        if overlap:  # P is computed while dP runs
          mm.mma(2, do_tile, v_t)
        p, dz = steps.probabilities(mm.get(1, wait_n=1), lse2, scale=scale,
                                    score_mod=score_mod, lse_dim=0, visible=visible)
        if not overlap:
          mm.mma(2, do_tile, v_t)
        ds = steps.score_grads(p, mm.get(2, wait_n=0), delta, dz, 0)
        mm.mma(0, ds.astype(q_ref.dtype), k_tile)

      def split_products(mm):  # accumulators: consumer 0: S; consumer 1: dQ, dP
        p_share, handed, _ = shared
        if role == 0:  # S, then P (times dz/ds with soft-cap) to consumer 1
          mm.mma(0, q_tile, k_t)
          p, dz = steps.probabilities(mm.get(0, wait_n=0), lse2, scale=scale,
                                      score_mod=score_mod, lse_dim=0, visible=visible)
          steps.hand_over(p_share, handed, e, p if dz is None else p * dz)
          return
        mm.mma(1, do_tile, v_t)
        dp = mm.get(1, wait_n=0)
        ds = steps.score_grads(steps.hand_over(p_share, handed, e), dp, delta, None, 0)
        mm.mma(0, ds.astype(q_ref.dtype), k_tile)

      a_smem = ds_smem.at[own_slot if split else wg] if interpretable else None
      if split:
        dq = steps.pipelined(split_products, dq, [shape], asynchronous=False, a_smem=a_smem)
      else:
        (dq,) = steps.pipelined(products, (dq,), [shape] * 2,
                                asynchronous=overlap and not interpretable, a_smem=a_smem)
      stream.release(slot)
      return dq

    mine = variants.own_tiles(spec, sched, pos, q_start, block_q, block_kv)
    if not split:
      dq = plgpu.layout_cast(jnp.zeros(q_tile.shape, jnp.float32), WGMMA)
      dq = sched.consume(mine, step, stream.skip, dq, base=base)
      steps.store_own([((dq * scale).astype(q_ref.dtype), q_tile, dq_ref.at[b, rows_, head])])
      return base + sched.count
    for role in range(2):  # static roles, one branch per consumer; the carry is
      # consumer 1's dQ (consumer 0 carries nothing)

      @pl.when(wg == role)
      def _consume():
        dq = (() if role == 0 else
              (plgpu.layout_cast(jnp.zeros(q_tile.shape, jnp.float32), WGMMA),))
        dq = sched.consume(mine, lambda *a, **kw: step(*a, **kw, role=role), stream.skip,
                           dq, base=base)
        sync_consumers()  # consumer 0 is done with the Q tile, which stages dQ's store
        if role == 1:
          steps.store_own([((dq[0] * scale).astype(q_ref.dtype), q_tile,
                            dq_ref.at[b, rows_, head])])
    return base + sched.count

  def produce_item(k, base):
    head, b, _, _, sched = item(k)
    kv_head = lax.div(head, jnp.int32(groups))

    def sources(e):
      kv_rows = pl.ds(sched.tile(e) * block_kv, block_kv)
      if interpretable:
        k_ref, kt_ref, vt_ref = kv_refs
        return (k_ref.at[b, kv_rows, kv_head], kt_ref.at[b, kv_head, :, kv_rows],
                vt_ref.at[b, kv_head, :, kv_rows])
      k_ref, v_ref = kv_refs
      return k_ref.at[b, kv_rows, kv_head], v_ref.at[b, kv_rows, kv_head]

    return stream.produce(sched.count, sources, base)

  steps.run_items(wg, consumers, local_items, item, consume_item, produce_item, stream)
