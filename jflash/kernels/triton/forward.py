"""Forward attention kernel: Pallas, Triton lowering.

FlashAttention-2 (Dao 2023, Algorithm 1): one program per (query tile, batch, head)
keeps its ``block_q`` queries on chip and streams the key/value tiles it sees through
shared memory, with a running row max ``m``, row sum ``l`` and an unnormalised fp32
accumulator (online softmax, base 2 with log2(e) folded into the scale as in Triton's
fused-attention tutorial). Only tiles that straddle the mask edge are masked; tiles
entirely masked are never visited (see :mod:`jflash.masks`).
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


def _forward_kernel(q_ref, k_ref, v_ref, *refs, scale: float, spec: MaskSpec,
                    score_mod: ScoreMod, names: tuple[str, ...], block_q: int, block_kv: int,
                    head_dim: int, num_q_tiles: int):
  # q_ref, o_ref: [block_q, Hp]; k_ref, v_ref: [S, Hp]; lse_ref: [block_q]; extras: see
  # variants.py (q_seg_ref [block_q], kv_seg_ref [S], bias, mask [block_q, S]).
  *extra_refs, o_ref, lse_ref = refs
  ex = variants.unpack(extra_refs, names)
  i = common.q_tile_index(pl.program_id(0), num_q_tiles, spec.is_causal)
  b, head = pl.program_id(1), pl.program_id(2)
  pos = ex.positions(spec, b)
  q_start = i * block_q
  cols = common.head_mask(head_dim, q_ref.shape[-1])
  q_pos = q_start + jnp.arange(block_q)
  in_range = q_pos < spec.q_len if spec.q_len % block_q else None
  q_rows = None if in_range is None else in_range[:, None]
  kv_ragged = spec.kv_len % block_kv != 0
  precision = common.dot_precision(q_ref.dtype)
  # Logits in base 2: without a score modification, the raw scores times c (folded
  # into the exponent, as in Triton's fused-attention tutorial); with one, z log2(e).
  c = scale * common.LOG2E if not score_mod.active else 1.0
  # float32 inputs pay one extra multiply per score for exact normalisation; 16-bit
  # inputs are dominated by their own rounding and take the fused form.
  exact_max = q_ref.dtype == jnp.float32
  q = common.load(q_ref, q_rows, cols)
  q_seg = common.load(ex.q_seg, in_range, other=-1) if spec.segment_ids else None
  slope = ex.slopes[b, head] if score_mod.alibi else None
  rate = score_mod.dropout_rate
  seed = ex.seeds[b, head] if rate else None

  def body(j, carry, masked):
    acc, m, l = carry
    kv_start = j * block_kv
    kv_slice = pl.ds(pl.multiple_of(kv_start, block_kv), block_kv)
    kv_pos = kv_start + jnp.arange(block_kv)
    kv_in = kv_pos < spec.kv_len if masked and kv_ragged else None
    kv_rows = None if kv_in is None else kv_in[:, None]
    kv_cols = None if kv_in is None else kv_in[None, :]
    k = common.load(k_ref.at[kv_slice, :], kv_rows, cols)
    s = plgpu.dot(q, k, trans_b=True, precision=precision)  # [block_q, block_kv] fp32
    if score_mod.active:
      bias = (variants.score_tile(ex.bias.at[:, kv_slice], q_rows, kv_cols)
              if score_mod.bias else None)
      s = score_mod.logits(s * scale, bias=bias, q_pos=(q_pos + pos.offset)[:, None],
                           kv_pos=kv_pos[None, :], slope=slope) * common.LOG2E
    if masked:
      vis = variants.visible(ex, spec, pos, i=i, j=j, q_pos=q_pos, kv_pos=kv_pos,
                             kv_slice=kv_slice, q_seg=q_seg, kv_in=kv_in, q_rows=q_rows,
                             kv_cols=kv_cols)
      s = jnp.where(vis, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    # A row with nothing visible yet keeps m = -inf; exponentiate against 0 instead.
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    alpha = common.exp2((m - m_use), c)
    if exact_max or score_mod.active:  # exp2(0) = 1 exactly at the row max
      p = common.exp2(s - m_use[:, None], c)
    else:  # one FFMA per score, as in FlashAttention-3
      p = jnp.exp2(s * c - (m_use * c)[:, None])
    l = l * alpha + jnp.sum(p, axis=1)
    if rate:  # dropout after the row sum: l normalises the undropped softmax
      p = jnp.where(dropout.keep(seed, q_pos[:, None], kv_pos[None, :], rate), p, 0.0)
    v = common.load(v_ref.at[kv_slice, :], kv_rows, cols)
    acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, precision=precision)
    return acc, m_new, l

  init = (jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  if spec.uses_tile_lists:
    acc, m, l = schedule.fold_tile_list(ex.count[b, i], ex.full[b, i],
                                     lambda t: ex.index[b, i, t], body, init)
  else:
    acc, m, l = masks.fold_tiles(spec.kv_tiles(q_start, block_q, block_kv, pos), body, init)
  empty = l == 0.0  # the row saw no key: out = 0 (acc is 0), lse = -inf
  if spec.q_lengths:  # padding rows, whose acc holds what they saw in full tiles
    empty = empty | (q_pos >= pos.q_len)
    acc = jnp.where(empty[:, None], 0.0, acc)
  out = acc * (dropout.scale(rate) / jnp.where(empty, 1.0, l))[:, None]
  # m is in units of 1/c base-2 exponents, i.e. (m c) ln 2 = m scale natural units
  # without a score modification.
  m_nat = m * common.LN2 if score_mod.active else m * scale
  lse = jnp.where(empty, -jnp.inf, m_nat + jnp.log2(l) * common.LN2)
  common.store(o_ref, out.astype(o_ref.dtype), q_rows, cols)
  common.store(lse_ref, lse, in_range)


def forward(q, k, v, operands: Operands, *, scale: float, spec: MaskSpec,
            score_mod: ScoreMod, config: TritonConfig, interpret: bool = False):
  """Attention forward pass on the GPU (or Pallas interpret mode).

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; one dtype (bfloat16, float16 or float32),
      N % K == 0, 1 <= H <= 256.
    operands: the runtime operands of the variants.
    scale: multiplies q.k before the softmax.
    spec, score_mod: the mask and score modification.
    config: `block_q`, `block_kv`, `num_warps`, `num_stages` are used.
    interpret: run the kernel in Pallas interpret mode (CPU).

  Returns:
    (out [B, T, N, H] in q.dtype, lse [B, T, N] float32, natural log); a query row
    that sees no key gets out 0 and lse -inf.
  """
  b, t, n, h = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  groups = n // kv_heads
  h_pad = padded_head_dim(h)
  block_q = common.tile_size(config.block_q, t)
  block_kv = common.tile_size(config.block_kv, s_len)
  num_q_tiles = common.cdiv(t, block_q)

  def q_block(i, bi, ni):
    return bi, common.q_tile_index(i, num_q_tiles, spec.is_causal), ni, 0

  def kv_block(i, bi, ni):
    return bi, 0, lax.div(ni, np.int32(groups)), 0

  extras, extra_specs, names, _ = variants.query_tile_inputs(
      spec, score_mod, operands, batch=b, block_q=block_q, block_kv=block_kv, q_block=q_block)
  kernel = functools.partial(_forward_kernel, scale=scale, spec=spec, score_mod=score_mod,
                             names=names, block_q=block_q, block_kv=block_kv, head_dim=h,
                             num_q_tiles=num_q_tiles)
  out, lse = pl.pallas_call(
      kernel,
      grid=(num_q_tiles, b, n),
      in_specs=[
          pl.BlockSpec((None, block_q, None, h_pad), q_block),
          pl.BlockSpec((None, s_len, None, h_pad), kv_block),
          pl.BlockSpec((None, s_len, None, h_pad), kv_block),
          *extra_specs,
      ],
      out_specs=[
          pl.BlockSpec((None, block_q, None, h_pad), q_block),
          pl.BlockSpec((None, block_q, None), lambda i, bi, ni: q_block(i, bi, ni)[:3]),
      ],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, t, n), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jflash_fwd",
  )(q, k, v, *extras)
  return out, lse
