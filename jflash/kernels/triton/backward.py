"""Backward attention kernels: Pallas, Triton lowering.

FlashAttention-2 backward (Dao 2023, Algorithm 2), split in two kernels so that no
program writes what another accumulates (no atomics, bitwise deterministic):

* dK/dV: one program per (key tile, batch, KV head) holds ``block_kv_dkv`` keys and
  values, and streams the query tiles that see them, for every query head of its GQA
  group, accumulating dK and dV in fp32 registers.
* dQ: one program per (query tile, batch, query head) holds ``block_q_dq`` queries and
  streams the key tiles they see, accumulating dQ.

Both recompute P = exp(scale * q.k - lse) tile by tile from the forward pass's lse, and
use delta = rowsum(dO * O) (minus dL/dlse), computed once beforehand. The dK/dV kernel
works on transposed tiles (S^T = K Q^T) so P^T feeds the dV product without a transpose,
as in Triton's fused-attention tutorial.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jflash import dropout, masks, schedule
from jflash.backends import Operands
from jflash.kernels.triton import common, variants
from jflash.kernels.triton.config import TritonConfig, padded_head_dim
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod


def _scores(s, *, scale, score_mod, bias, q_pos, kv_pos, slope):
  """(x, scale_of_x, dz/ds): what common.probabilities takes, and the soft-cap factor.

  Without a score modification x is the raw q.k (scaled inside `probabilities`); with
  one, x is the logits z (already scaled).
  """
  if not score_mod.active:
    return s, scale, None
  z, dz_ds = score_mod.logits(s * scale, bias=bias, q_pos=q_pos, kv_pos=kv_pos, slope=slope,
                              with_grad=True)
  return z, 1.0, dz_ds


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale: float,
                spec: MaskSpec, score_mod: ScoreMod, names: tuple[str, ...], block_q: int,
                block_kv: int, head_dim: int, groups: int):
  # q_ref, do_ref: [T, G, Hp]; k_ref, v_ref, dk_ref, dv_ref: [block_kv, Hp];
  # lse_ref (common.lse_operand), delta_ref: [G, T]; q_seg [T], kv_seg [block_kv];
  # bias, mask: [G, T, block_kv] (or [T, block_kv] when shared by the heads).
  *extra_refs, dk_ref, dv_ref = refs
  ex = variants.unpack(extra_refs, names)
  j, b, kv_head = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  pos = ex.positions(spec, b)
  kv_start = j * block_kv
  h_pad = k_ref.shape[-1]
  cols = common.head_mask(head_dim, h_pad)
  kv_pos = kv_start + jnp.arange(block_kv)
  kv_in = kv_pos < spec.kv_len if spec.kv_len % block_kv else None
  kv_rows = None if kv_in is None else kv_in[:, None]
  kv_cols = None if kv_in is None else kv_in[None, :]
  q_ragged = spec.q_len % block_q != 0
  precision = common.dot_precision(k_ref.dtype)
  k = common.load(k_ref, kv_rows, cols)
  v = common.load(v_ref, kv_rows, cols)
  kv_seg = common.load(ex.kv_seg, kv_in, other=-2) if spec.segment_ids else None

  rate = score_mod.dropout_rate

  def one_head(g, carry):
    slope = ex.slopes[b, kv_head * groups + g] if score_mod.alibi else None
    seed = ex.seeds[b, kv_head * groups + g] if rate else None

    def score_tile(ref, q_slice, rows):  # this head's [block_kv, block_q] tile of ref
      tile = ref.at[g, q_slice, :] if len(ref.shape) == 3 else ref.at[q_slice, :]
      return variants.score_tile(tile, rows, kv_cols, transpose=True)

    def body(i, carry, masked):
      dk, dv = carry
      q_start = i * block_q
      q_slice = pl.ds(pl.multiple_of(q_start, block_q), block_q)
      q_pos = q_start + jnp.arange(block_q)
      in_range = q_pos < spec.q_len if masked and q_ragged else None
      rows = None if in_range is None else in_range[:, None]
      q = common.load(q_ref.at[q_slice, g, :], rows, cols)
      do = common.load(do_ref.at[q_slice, g, :], rows, cols)
      # Rows past T get lse = +inf, so their probabilities are exactly 0.
      lse = common.load(lse_ref.at[g, q_slice], in_range, other=jnp.inf)
      delta = common.load(delta_ref.at[g, q_slice], in_range)
      s_t = plgpu.dot(k, q, trans_b=True, precision=precision)  # [block_kv, block_q]
      bias_t = score_tile(ex.bias, q_slice, rows) if score_mod.bias else None
      x_t, x_scale, dz_ds = _scores(s_t, scale=scale, score_mod=score_mod, bias=bias_t,
                                    q_pos=(q_pos + pos.offset)[None, :],
                                    kv_pos=kv_pos[:, None], slope=slope)
      p_t = common.probabilities(x_t, lse[None, :], x_scale, q_ref.dtype)
      if masked:
        vis = spec.visible(q_pos[None, :], kv_pos[:, None], pos)
        if kv_seg is not None:
          q_seg = common.load(ex.q_seg.at[q_slice], in_range, other=-1)
          vis = vis & masks.segment_visible(kv_seg, q_seg)
        if spec.dense_mask:
          vis = vis & (score_tile(ex.mask, q_slice, rows) != 0)
        if spec.mask_object is not None:
          vis = vis & (ex.object_tile(j, i) != 0)  # transposed patterns
        p_t = jnp.where(vis, p_t, 0.0)
      dp_t = plgpu.dot(v, do, trans_b=True, precision=precision)
      if rate:  # dV from the dropped probabilities; dP through the same keep mask
        keep_t = dropout.keep(seed, q_pos[None, :], kv_pos[:, None], rate)
        r = dropout.scale(rate)
        dv = dv + plgpu.dot(jnp.where(keep_t, p_t * r, 0.0).astype(do.dtype), do,
                            precision=precision)
        dp_t = jnp.where(keep_t, dp_t * r, 0.0)
      else:
        dv = dv + plgpu.dot(p_t.astype(do.dtype), do, precision=precision)
      ds_t = p_t * (dp_t - delta[None, :])
      if dz_ds is not None:
        ds_t = ds_t * dz_ds
      dk = dk + plgpu.dot(ds_t.astype(q.dtype), q, precision=precision)
      return dk, dv

    if spec.uses_tile_lists:
      return schedule.fold_tile_list(ex.count[b, j], ex.full[b, j], lambda t: ex.index[b, j, t],
                                  body, carry)
    return masks.fold_tiles(spec.q_tiles(kv_start, block_kv, block_q, pos), body, carry)

  zeros = jnp.zeros((block_kv, h_pad), jnp.float32)
  if groups == 1:
    dk, dv = one_head(jnp.int32(0), (zeros, zeros))
  else:
    dk, dv = lax.fori_loop(0, groups, one_head, (zeros, zeros))
  common.store(dk_ref, (dk * scale).astype(dk_ref.dtype), kv_rows, cols)
  common.store(dv_ref, dv.astype(dv_ref.dtype), kv_rows, cols)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale: float,
               spec: MaskSpec, score_mod: ScoreMod, names: tuple[str, ...], block_q: int,
               block_kv: int, head_dim: int, num_q_tiles: int):
  # q_ref, do_ref, dq_ref: [block_q, Hp]; k_ref, v_ref: [S, Hp]; lse_ref, delta_ref:
  # [block_q]; q_seg [block_q], kv_seg [S]; bias, mask, dbias_ref: [block_q, S].
  if score_mod.bias_grad:
    *extra_refs, _, dq_ref, dbias_ref = refs  # the aliased zeros input is dbias_ref
  else:
    *extra_refs, dq_ref = refs
  ex = variants.unpack(extra_refs, names)
  i = common.q_tile_index(pl.program_id(0), num_q_tiles, spec.is_causal)
  b, head = pl.program_id(1), pl.program_id(2)
  pos = ex.positions(spec, b)
  q_start = i * block_q
  h_pad = q_ref.shape[-1]
  cols = common.head_mask(head_dim, h_pad)
  q_pos = q_start + jnp.arange(block_q)
  in_range = q_pos < spec.q_len if spec.q_len % block_q else None
  q_rows = None if in_range is None else in_range[:, None]
  kv_ragged = spec.kv_len % block_kv != 0
  precision = common.dot_precision(q_ref.dtype)
  q = common.load(q_ref, q_rows, cols)
  do = common.load(do_ref, q_rows, cols)
  lse = common.load(lse_ref, in_range, other=jnp.inf)
  delta = common.load(delta_ref, in_range)
  q_seg = common.load(ex.q_seg, in_range, other=-1) if spec.segment_ids else None
  slope = ex.slopes[b, head] if score_mod.alibi else None
  rate = score_mod.dropout_rate
  seed = ex.seeds[b, head] if rate else None

  def body(j, dq, masked):
    kv_start = j * block_kv
    kv_slice = pl.ds(pl.multiple_of(kv_start, block_kv), block_kv)
    kv_pos = kv_start + jnp.arange(block_kv)
    kv_in = kv_pos < spec.kv_len if masked and kv_ragged else None
    kv_rows = None if kv_in is None else kv_in[:, None]
    kv_cols = None if kv_in is None else kv_in[None, :]
    k = common.load(k_ref.at[kv_slice, :], kv_rows, cols)
    v = common.load(v_ref.at[kv_slice, :], kv_rows, cols)
    s = plgpu.dot(q, k, trans_b=True, precision=precision)  # [block_q, block_kv]
    bias = (variants.score_tile(ex.bias.at[:, kv_slice], q_rows, kv_cols)
            if score_mod.bias else None)
    x, x_scale, dz_ds = _scores(s, scale=scale, score_mod=score_mod, bias=bias,
                                q_pos=(q_pos + pos.offset)[:, None], kv_pos=kv_pos[None, :],
                                slope=slope)
    p = common.probabilities(x, lse[:, None], x_scale, q_ref.dtype)
    if masked:
      vis = variants.visible(ex, spec, pos, i=i, j=j, q_pos=q_pos, kv_pos=kv_pos,
                             kv_slice=kv_slice, q_seg=q_seg, kv_in=kv_in, q_rows=q_rows,
                             kv_cols=kv_cols)
      p = jnp.where(vis, p, 0.0)
    dp = plgpu.dot(do, v, trans_b=True, precision=precision)
    if rate:
      keep = dropout.keep(seed, q_pos[:, None], kv_pos[None, :], rate)
      dp = jnp.where(keep, dp * dropout.scale(rate), 0.0)
    ds = p * (dp - delta[:, None])
    if dz_ds is not None:
      ds = ds * dz_ds
    if score_mod.bias_grad:  # dL/dbias is dL/d(logits); tiles never visited stay 0
      common.store(dbias_ref.at[:, kv_slice], ds, q_rows, kv_cols)
    return dq + plgpu.dot(ds.astype(k.dtype), k, precision=precision)

  init = jnp.zeros((block_q, h_pad), jnp.float32)
  if spec.uses_tile_lists:
    dq = schedule.fold_tile_list(ex.count[b, i], ex.full[b, i], lambda t: ex.index[b, i, t],
                              body, init)
  else:
    dq = masks.fold_tiles(spec.kv_tiles(q_start, block_q, block_kv, pos), body, init)
  common.store(dq_ref, (dq * scale).astype(dq_ref.dtype), q_rows, cols)


def backward(q, k, v, operands: Operands, lse, delta, do, *, scale: float, spec: MaskSpec,
             score_mod: ScoreMod, config: TritonConfig, interpret: bool = False):
  """Attention backward pass on the GPU (or Pallas interpret mode).

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; do: [B, T, N, H] (dL/dout), one dtype.
    operands: the runtime operands of the variants.
    lse: [B, T, N] float32 natural-log softmax normaliser from the forward pass, +inf on
      rows that see no key.
    delta: [B, T, N] float32, rowsum(do * out) minus dL/dlse.
    scale, spec, score_mod: as in the forward pass.
    config: the `*_dkv` and `*_dq` fields are used.
    interpret: run the kernels in Pallas interpret mode (CPU).

  Returns:
    (dq, dk, dv, dbias): dq, dk, dv with the shapes and dtypes of (q, k, v); dbias None,
    or with ``score_mod.bias_grad`` float32 dL/dbias as a full [B, N, T, S] array
    (4 B N T S bytes; the caller sums it over the bias's broadcast axes).
  """
  b, t, n, h = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  groups = n // kv_heads
  h_pad = padded_head_dim(h)
  # Row statistics as [B, N, T]: each tile reads them contiguously. lse in base 2 for
  # 16-bit inputs (see common.probabilities).
  lse2 = jnp.swapaxes(common.lse_operand(lse, q.dtype), 1, 2)
  delta = jnp.swapaxes(delta, 1, 2)

  block_q = common.tile_size(config.block_q_dkv, t)
  block_kv = common.tile_size(config.block_kv_dkv, s_len)
  grouped_rows = pl.BlockSpec((None, t, groups, h_pad), lambda j, bi, ki: (bi, 0, ki, 0))
  kv_tile = pl.BlockSpec((None, block_kv, None, h_pad), lambda j, bi, ki: (bi, j, ki, 0))
  grouped_stats = pl.BlockSpec((None, groups, t), lambda j, bi, ki: (bi, ki, 0))

  def dkv_scores_spec(x):  # [G, T, block_kv] of the KV head's query heads, or [T, block_kv]
    heads = groups if x.shape[1] > 1 else None
    return pl.BlockSpec((None, heads, t, block_kv), lambda j, bi, ki: (
        *variants.scores_index(x, bi, ki), 0, j))

  extras, extra_specs, names = variants.inputs(
      spec, score_mod, operands, batch=b, block_q=block_q, block_kv=block_kv, transpose=True,
      q_seg_spec=pl.BlockSpec((None, t), lambda j, bi, ki: (bi, 0)),
      kv_seg_spec=pl.BlockSpec((None, block_kv), lambda j, bi, ki: (bi, j)),
      scores_spec=dkv_scores_spec)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, spec=spec, score_mod=score_mod, names=names,
                        block_q=block_q, block_kv=block_kv, head_dim=h, groups=groups),
      grid=(common.cdiv(s_len, block_kv), b, kv_heads),
      in_specs=[grouped_rows, kv_tile, kv_tile, grouped_rows, grouped_stats, grouped_stats,
                *extra_specs],
      out_specs=[kv_tile, kv_tile],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps_dkv,
                                           num_stages=config.num_stages_dkv),
      interpret=interpret,
      name="jflash_bwd_dkv",
  )(q, k, v, do, lse2, delta, *extras)

  block_q = common.tile_size(config.block_q_dq, t)
  block_kv = common.tile_size(config.block_kv_dq, s_len)
  num_q_tiles = common.cdiv(t, block_q)

  def q_block(i, bi, ni):
    return bi, common.q_tile_index(i, num_q_tiles, spec.is_causal), ni, 0

  q_tile = pl.BlockSpec((None, block_q, None, h_pad), q_block)
  kv_rows = pl.BlockSpec((None, s_len, None, h_pad),
                         lambda i, bi, ni: (bi, 0, lax.div(ni, np.int32(groups)), 0))
  stats = pl.BlockSpec((None, None, block_q), lambda i, bi, ni: (bi, ni, q_block(i, bi, ni)[1]))

  extras, extra_specs, names, scores_spec = variants.query_tile_inputs(
      spec, score_mod, operands, batch=b, block_q=block_q, block_kv=block_kv, q_block=q_block)
  out_specs, out_shape, aliases = q_tile, jax.ShapeDtypeStruct(q.shape, q.dtype), {}
  if score_mod.bias_grad:  # dbias [B, N, T, S]: zeros in, the visited tiles written
    dbias = jnp.zeros((b, n, t, s_len), jnp.float32)
    extras, extra_specs = [*extras, dbias], [*extra_specs, scores_spec(dbias)]
    out_specs, out_shape = [q_tile, scores_spec(dbias)], [out_shape, dbias]
    aliases = {6 + len(extras) - 1: 1}
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, spec=spec, score_mod=score_mod, names=names,
                        block_q=block_q, block_kv=block_kv, head_dim=h,
                        num_q_tiles=num_q_tiles),
      grid=(num_q_tiles, b, n),
      in_specs=[q_tile, kv_rows, kv_rows, q_tile, stats, stats, *extra_specs],
      out_specs=out_specs,
      out_shape=out_shape,
      input_output_aliases=aliases,
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps_dq,
                                           num_stages=config.num_stages_dq),
      interpret=interpret,
      name="jflash_bwd_dq",
  )(q, k, v, do, lse2, delta, *extras)
  dbias = None
  if score_mod.bias_grad:
    dq, dbias = dq
  return dq, dk, dv, dbias
