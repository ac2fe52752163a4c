"""Backward attention kernels: Pallas Mosaic GPU (Hopper, sm90a).

FlashAttention-2's backward (Dao 2023, Algorithm 2) split in two kernels so that no
CTA writes what another accumulates: no atomics, so gradients are bitwise identical run
to run. Both have the forward's warp-specialised shape (:mod:`.forward`): a producer
warpgroup streams tiles through a TMA ring (:class:`.common.Stream`) to two consumer
warpgroups that each own 64-row tiles of the other side and accumulate in registers.

* dK/dV: a CTA holds 2 * ``bwd_block_kv`` keys and values of one KV head and streams the
  query tiles that see them, for every query head of its GQA group (so K and V are
  never repeated and dK, dV are summed over the group on chip). It works on transposed
  tiles: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, so Pᵀ and dSᵀ feed dV += Pᵀ dO and dK += dSᵀ Q.
  (:mod:`.backward_dkv`.)
  Past H = 128, where a consumer's registers hold dK or dV of its 64 keys but not both,
  the two consumers share one key tile: consumer 0 computes Pᵀ and dV, consumer 1 dPᵀ
  and dK with Pᵀ handed over in fp32 through shared memory (four products per tile,
  two each; when each consumer recomputed Pᵀ for itself, five, three of them on the
  dK consumer). On an H200 that cut the backward's kernels at H = 256 to 0.87-0.88x
  their time (T = 16k causal), 0.82-0.84x (non-causal), 0.92x and 0.86x (T = 2k causal
  and not), and at H = 192 to 0.90-0.97x and 0.93x (BUILD_NOTES, issue 10 session 12).
* dQ: a CTA holds 2 * ``bwd_block_q`` queries and streams the key/value tiles they see:
  S = Q Kᵀ, dP = dO Vᵀ, dQ += dS K. (:mod:`.backward_dq`; at H = 256, where two
  consumers' own tiles do not fit shared memory, both share one query tile, P handed
  from one to the other; against one consumer, the backward's kernels took 0.95x the
  time at T = 16k causal, 0.96x at 2k causal, 0.98-1.01x non-causal: H200, session 12.)

* fused (``MosaicGpuConfig(bwd_fused=True)`` with ``deterministic=False``, H <= 128;
  the default with deterministic=False at H <= 64 for causal T > 4k and non-causal
  T >= 2k): the dK/dV kernel also computes dQ = dS K over both consumers' keys
  (:func:`.backward_steps.dq_share`) and TMA-reduce-adds it in fp32 into a zeroed dQ
  accumulator (FlashAttention-3's backward): 5 matrix multiplies per tile instead of 7,
  at the price of an unordered sum (not bitwise reproducible). On an H200 at H=64 its
  kernel took 0.87-0.96x the two kernels' time there, 1.09-1.10x at causal T <= 4k,
  and up to 1.4x at H=128 (BUILD_NOTES).

A tile's matrix multiplies are written once (:func:`.backward_steps.pipelined`). With
64 x 64 tiles at H <= 128 (two kernels) they overlap inside each consumer, as in
FlashAttention-3: S and dP are issued together, P is computed while dP runs, dS while
dV runs; in the fused kernel only at H = 64, where it fits without spills. Elsewhere
each completes when issued, which needs fewer registers.

Both recompute P = exp(scale q.k - lse) from the forward pass's lse and use delta =
rowsum(dO * O) - dL/dlse. As in the forward, the native form reads transposed operands
through transposed shared-memory views and feeds Pᵀ, dSᵀ and dS to wgmma from
registers; the interpretable form takes the transposed operands pre-transposed from
XLA and routes the register operands through shared memory.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.backends import Operands
from jflash.kernels.mosaic_gpu import backward_dkv, backward_steps as steps, common, variants
from jflash.kernels.mosaic_gpu.backward_dq import dq_kernel
from jflash.kernels.mosaic_gpu.config import (SMEM_BYTES, MosaicGpuConfig, dq_smem_bytes,
                                              fused_dq_share, kernel_head_dim, swizzle_bytes)
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

CONSUMERS, LOG2E = steps.CONSUMERS, steps.LOG2E


def backward(q, k, v, lse, delta, do, operands: Operands = Operands(), *, scale: float, spec: MaskSpec, score_mod: ScoreMod,
             config: MosaicGpuConfig, interpret: bool = False,
             interpretable: bool | None = None):
  """Attention backward pass on a Hopper GPU (or Mosaic GPU interpret mode).

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; do: [B, T, N, H] (dL/dout); bfloat16 or float16.
    lse: [B, T, N] float32 natural-log softmax normaliser from the forward pass, +inf on
      rows that see no key.
    delta: [B, T, N] float32, rowsum(do * out) minus dL/dlse.
    operands: the runtime operands of the variants (positions, segment ids).
    scale, spec, score_mod: as in the forward pass.
    config: `bwd_block_q`, `bwd_block_kv`, `bwd_num_stages`, `bwd_persistent`,
      `bwd_fused`, `bwd_overlap` are used (the caller checks that `bwd_fused` goes with
      deterministic=False: :func:`.config.check_fits`).
    interpret, interpretable: as in :func:`.forward.forward`.

  Returns:
    (dq, dk, dv) with the shapes and dtypes of (q, k, v).
  """
  interpretable = interpret if interpretable is None else interpretable
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  groups = n // kv_heads
  block_q, block_kv, stages = config.bwd_block_q, config.bwd_block_kv, config.bwd_num_stages
  h_pad = kernel_head_dim(h)
  itemsize = jnp.dtype(q.dtype).itemsize
  # dQ: its own tiles where the config gives them; two consumers, each with its own
  # query tile, unless their Q and dO tiles and the K/V ring overflow shared memory (H =
  # 256: 256 KiB); then two consumers sharing one query tile (`dq_split`: P handed
  # over), or one if even that does not fit. dK/dV: past H = 128, one key tile
  # split by dK and dV.
  dq_block_q, dq_block_kv = config.bwd_dq_block_q or block_q, config.bwd_dq_block_kv or block_kv
  fits = lambda c, split=False: dq_smem_bytes(c, dq_block_q, dq_block_kv, stages, h_pad,
                                              itemsize, split) <= SMEM_BYTES
  dq_split = not fits(2) and fits(2, split=True)
  consumers_dq = 2 if fits(2) or dq_split else 1
  split = h_pad > 128
  # Fused (bwd_fused; config.check_fits allows it with H <= 128, tiles that fit and
  # deterministic=False): how the consumers share dQ, config.fused_dq_share.
  fused = None
  if config.bwd_fused:
    if split:
      raise ValueError(f"MosaicGpuConfig(bwd_fused=True) serves head dims <= 128, not {h}")
    fused = fused_dq_share(h_pad)
  # T and S padded to whole CTAs of both kernels (of the dK/dV kernel alone if fused).
  dq_rows = (1 if dq_split else consumers_dq) * dq_block_q  # query rows per dQ CTA
  kv_multiple = block_kv if split else CONSUMERS * block_kv  # key rows per dK/dV CTA
  q_pad, kv_pad = ((block_q, kv_multiple) if fused else
                   (math.lcm(dq_rows, block_q), math.lcm(kv_multiple, dq_block_kv)))
  q, k, v = common.pad_inputs(q, k, v, q_pad, kv_pad)
  do = common.pad(do, q_pad)
  t_pad, s_pad = q.shape[1], k.shape[1]
  # Row statistics as [B, N, Tp]; padding rows get lse = +inf, so P = 0 there.
  lse2 = jnp.pad(jnp.swapaxes(lse, 1, 2) * LOG2E, ((0, 0), (0, 0), (0, t_pad - t)),
                 constant_values=jnp.inf)
  delta = jnp.pad(jnp.swapaxes(delta, 1, 2), ((0, 0), (0, 0), (0, t_pad - t)))
  dtype = q.dtype
  smem = functools.partial(common.smem, dtype=dtype)
  rows_q, rows_kv = (block_q, h_pad), (block_kv, h_pad)
  params = dict(scale=scale, spec=spec, score_mod=score_mod, block_q=block_q,
                block_kv=block_kv, stages=stages, groups=groups, interpretable=interpretable)
  mosaic = dict(thread_name="wg", compiler_params=common.compiler_params(),
                interpret=common.interpret_params() if interpret else None)
  transposed = lambda x: jnp.transpose(x, (0, 2, 3, 1))  # [B, L, heads, H] -> [B, heads, H, L]

  dq_rows_kv = (dq_block_kv, h_pad)
  kv_tiles = [(dq_rows_kv, dtype)] + ([((h_pad, dq_block_kv), dtype)] * 2 if interpretable
                                      else [(dq_rows_kv, dtype)])
  kv_in = (k, transposed(k), transposed(v)) if interpretable else (k, v)
  c = consumers_dq
  extras, names = variants.inputs(spec, operands, batch=b, t_pad=t_pad, s_pad=s_pad,
                                  rows=dq_rows, cols=dq_block_kv)
  # Causal dQ work in L2 sections, as in the forward, at H >= 128: measured on an H200
  # (ABAB, BUILD_NOTES issue 10 session 3) 1.02-1.04x at H=128/256, T=2k/4k, and
  # 0.975x at H=64 (query blocks of 256 rows; not understood), where it stays off;
  # 1.02-1.04x at H=192 (session 4); with one CTA per item at T = 16k, sections of one
  # pair 1.03x (H=128) and 1.04x (H=256), and 0.98x at H=64 (session 9).
  dq_ctas = common.num_ctas(t_pad // dq_rows * n * b, config.bwd_persistent, interpret)
  dq_l2_group = (common.l2_group(2 * s_pad * h_pad * itemsize, n * b, t_pad // dq_rows,
                                 dq_ctas if config.bwd_persistent else None)
                 if h_pad >= 128 else n * b)
  # Each consumer's S and dP go to the tensor cores together where both fit its
  # registers with the accumulators: 64 x 64 tiles at H <= 128. H200, B·T = 16k,
  # bf16 (ABAB, BUILD_NOTES issue 10 session 4): H=128 1.09x (T=2k) and 1.04-1.09x
  # (T=16k causal) the one-at-a-time order; H=64's 128-query tiles and H=256 spilled
  # 300-1100 bytes and ran 0.7x and 0.98x; the fused kernel spilled more and ran slower.
  overlaps = lambda rows, cols: h_pad <= 128 and rows * cols <= 64 * 64
  # The fused kernel overlaps only at H = 64 (64 x 64 tiles: no spills; 0.99x the serial
  # order at T=16k causal, H200, session 9); at H = 128 it spilled and ran 0.4-0.8x
  # (session 4). Since session 15 (common.positions, common.opaque) ptxas reports no
  # spills in the overlapped forms at H = 64's 128-query tiles nor in the fused kernel at
  # H = 128; they are not re-measured yet. config.bwd_overlap, if set, decides for every
  # kernel instead.
  if config.bwd_overlap is not None:
    overlaps = lambda rows, cols: config.bwd_overlap
  overlap = overlaps(block_q, block_kv)
  fused_overlap = (overlap and (not fused or h_pad == 64) if config.bwd_overlap is None
                   else config.bwd_overlap)
  dq_rows_q = (dq_block_q, h_pad)
  own_q = 1 if dq_split else c  # the dQ CTA's own query tiles
  dq = None if fused else plgpu.kernel(
      functools.partial(dq_kernel, consumers=c, names=names, rows=t_pad // dq_rows,
                        heads=n, batch=b, **{**params, "block_q": dq_block_q,
                                             "block_kv": dq_block_kv},
                        l2_group=dq_l2_group, overlap=overlaps(dq_block_q, dq_block_kv),
                        split=dq_split),
      out_type=jax.ShapeDtypeStruct(q.shape, dtype),
      scratch_types=[
          (smem((own_q, *dq_rows_q)), smem((own_q, *dq_rows_q)),
           plgpu.SMEM((own_q, dq_block_q), jnp.float32),
           plgpu.SMEM((own_q, dq_block_q), jnp.float32)),
          tuple(plgpu.Barrier(num_barriers=own_q) for _ in range(4)),
          *common.stream_scratch(kv_tiles, stages, c),
          smem((c, dq_block_q, dq_block_kv)) if interpretable else None,
          # dq_split: P (fp32) handed over in two slots by entry parity, their barriers,
          # and one to sync the consumers around the shared tiles.
          *([common.smem((2, dq_block_q, dq_block_kv), jnp.float32),
             plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=2),
             plgpu.Barrier(num_arrivals=CONSUMERS)]
            if dq_split else []),
      ],
      grid=(dq_ctas,),
      grid_names=("cta",), num_threads=c + 1,
      kernel_name="jflash_mgpu_bwd_dq", **mosaic,
  )(q, do, lse2, delta, *kv_in, *extras) if not fused else None

  if interpret and dq is not None:  # the dQ kernel's races, before the dK/dV kernel runs
    dq, k = common.check_races(dq, k)
  q_tiles = [(rows_q, dtype)] * 2
  if interpretable:
    q_tiles += [((h_pad, block_q), dtype)] * 2
  q_tiles += [((block_q,), jnp.float32)] * 2
  q_in = (q, do, transposed(q), transposed(do)) if interpretable else (q, do)
  own = 1 if split else CONSUMERS
  extras, names = variants.inputs(spec, operands, batch=b, t_pad=t_pad, s_pad=s_pad,
                                  rows=kv_multiple, cols=block_q, transpose=True)
  share_scratch = []
  if split:  # consumer 0's Pᵀ for consumer 1, in two slots by entry parity
    share_scratch = [common.smem((2, block_kv, block_q), jnp.float32),
                     plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=2)]
  if fused:  # the zeroed fp32 dQ accumulator (interpretable: a slice per writer), dS, dQ
    writers = (s_pad // kv_multiple * CONSUMERS,) if interpretable else ()
    dq_acc = jnp.zeros((*writers, *q.shape), jnp.float32)
    ds_tile = (block_q, block_kv) if interpretable else (block_kv, block_q)
    dq_cols = h_pad // 2 if fused == "cols" else h_pad
    share_scratch = [smem((2, CONSUMERS, *ds_tile), swizzle=swizzle_bytes(h_pad, dtype)),
                     common.smem((CONSUMERS, block_q, dq_cols), jnp.float32),
                     plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=2)]
  # Causal dK/dV work in L2 sections of the pairs whose Q and dO fit (common.l2_group),
  # only past L2_SECTION_ROWS key blocks: with one CTA per item at T = 16k, H200, bf16
  # (BUILD_NOTES issue 10 session 9) 1.01x (H=64), 1.03x (H=128), 1.01x (H=256); at
  # T = 8k, H=64 up to 1.05-1.10x; at T = 4k sections did not help (0.95-1.0x, session
  # 3; 1.00x, session 9).
  dkv_rows, dkv_pairs = s_pad // kv_multiple, kv_heads * b
  dkv_ctas = common.num_ctas(dkv_rows * dkv_pairs, config.bwd_persistent, interpret)
  dkv_l2_group = (common.l2_group(2 * groups * t_pad * h_pad * itemsize, dkv_pairs, dkv_rows,
                                  dkv_ctas if config.bwd_persistent else None)
                  if dkv_rows > common.L2_SECTION_ROWS else dkv_pairs)
  dkv_kernel = plgpu.kernel(
      functools.partial(backward_dkv.dkv_kernel, split=split, fused=fused, overlap=fused_overlap,
                        names=names, l2_group=dkv_l2_group,
                        rows=dkv_rows, heads=kv_heads, batch=b, **params),
      out_type=[jax.ShapeDtypeStruct(k.shape, dtype)] * 2,
      scratch_types=[
          (smem((own, *rows_kv)), smem((own, *rows_kv))),
          tuple(plgpu.Barrier(num_barriers=own) for _ in range(2)),
          *common.stream_scratch(q_tiles, stages, CONSUMERS),
          smem((CONSUMERS, block_kv, block_q)) if interpretable else None,
          plgpu.Barrier(num_arrivals=CONSUMERS),
          *share_scratch,
      ],
      grid=(dkv_ctas,),
      grid_names=("cta",),
      num_threads=CONSUMERS + 1, kernel_name="jflash_mgpu_bwd_dkv", **mosaic,
  )
  dkv_in = (k, v, q, do, *q_in[2:], lse2, delta, *extras)
  if fused:
    # The kernel adds into the accumulator in place: a ref, scoped by run_state (a ref
    # made with jax.new_ref cannot cross the custom_vjp around this backward pass).
    def run(refs):
      acc_ref, dk_ref, dv_ref = refs
      dk_ref[...], dv_ref[...] = dkv_kernel(*dkv_in, acc_ref)

    dq, dk, dv = pl.run_state(run)((dq_acc, jnp.empty_like(k), jnp.empty_like(v)))
    dq = ((dq.sum(0) if interpretable else dq) * scale).astype(dtype)
  else:
    dk, dv = dkv_kernel(*dkv_in)
  if interpret:
    dq, dk, dv = common.check_races(dq, dk, dv)
  s_len = spec.kv_len
  return dq[:, :t, :, :h], dk[:, :s_len, :, :h], dv[:, :s_len, :, :h]
