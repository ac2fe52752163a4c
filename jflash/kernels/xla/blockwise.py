"""The ``implementation="xla"`` backend: blockwise attention in pure JAX.

`forward` / `backward` follow the FlashAttention-2 algorithm (Dao 2023, Algorithms 1
and 2) written with `lax.map` over query (or key) tiles and `lax.fori_loop` over the
tiles they see, so memory stays linear in T and S and masked-out tiles are never
computed. All batch elements go through a tile together, so a tile is visited if any
batch element sees part of it, and run unmasked only if every batch element sees all of
it. It runs wherever XLA does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jflash import dropout, masks, schedule
from jflash.backends import Operands
from jflash.kernels.xla.config import XlaConfig
from jflash.masks import MaskSpec, Positions
from jflash.scores import ScoreMod


def _precision(dtype):
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _pad_to(x, axis: int, size: int, value=0):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


class _Call(NamedTuple):
  """What the tile bodies of one call need besides q, k, v."""

  spec: MaskSpec
  score_mod: ScoreMod
  scale: float
  bq: int
  bkv: int
  pos: Positions      # Python ints, or [B, 1, 1, 1, 1] int32 arrays
  flat: Positions     # Python ints, or [B] int32 arrays
  q_seg: jax.Array | None   # [B, T'] int32, padded
  kv_seg: jax.Array | None  # [B, S'] int32, padded
  slopes: jax.Array | None  # [B, K, G, 1, 1] float32
  bias: jax.Array | None    # [B or 1, K or 1, G or 1, T', S'], padded with 0
  mask: jax.Array | None    # [B or 1, K or 1, G or 1, T', S'] bool, padded with False
  obj_ids: jax.Array | None     # [nq, nkv] int32: a mask object's pattern of each tile
  obj_blocks: jax.Array | None  # [U, bq, bkv] bool: its distinct patterns
  seeds: jax.Array | None       # [B, K, G, 1, 1] uint32 dropout seeds


def _scores_operand(x, kv_heads, groups, nq, bq, nkv, bkv, value):
  """[B or 1, N or 1, T, S] -> [B or 1, K or 1, G or 1, T', S'], padded with `value`."""
  x = _pad_to(_pad_to(x, 2, nq * bq, value), 3, nkv * bkv, value)
  heads = (kv_heads, groups) if x.shape[1] > 1 else (1, 1)
  return x.reshape(x.shape[0], *heads, *x.shape[2:])


def _setup(spec, score_mod, scale, config, operands: Operands, b, kv_heads, groups):
  bq, bkv = min(config.block_q, spec.q_len), min(config.block_kv, spec.kv_len)
  nq, nkv = -(-spec.q_len // bq), -(-spec.kv_len // bkv)
  flat = spec.batch_positions(operands.q_offset, operands.q_lengths, operands.kv_lengths)
  pos = Positions(*(x if isinstance(x, int) else x.reshape(b, 1, 1, 1, 1) for x in flat))
  q_seg = kv_seg = slopes = None
  if spec.segment_ids:
    q_seg = _pad_to(operands.q_segment_ids, 1, nq * bq, -1)
    kv_seg = _pad_to(operands.kv_segment_ids, 1, nkv * bkv, -2)
  if score_mod.alibi:
    slopes = operands.alibi_slopes.reshape(b, kv_heads, groups, 1, 1)
  tiles = (kv_heads, groups, nq, bq, nkv, bkv)
  bias = mask = None
  if score_mod.bias:
    bias = _scores_operand(operands.bias, *tiles, 0)
  if spec.dense_mask:
    mask = _scores_operand(operands.mask != 0, *tiles, False)
  obj_ids = obj_blocks = None
  if spec.mask_object is not None:
    obj_ids, obj_blocks = spec.object_tiles(bq, bkv)
    obj_ids, obj_blocks = schedule.constant(obj_ids), schedule.constant(obj_blocks != 0)
  seeds = None
  if score_mod.dropout_rate:
    seeds = operands.dropout_seeds.reshape(b, kv_heads, groups, 1, 1)
  call = _Call(spec, score_mod, scale, bq, bkv, pos, flat, q_seg, kv_seg, slopes, bias, mask,
               obj_ids, obj_blocks, seeds)
  return call, nq, nkv


def _score_tile(x, q_start, kv_start, bq, bkv):
  return lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(x, q_start, bq, axis=3),
                                  kv_start, bkv, axis=4)


def _logits(call: _Call, s, q_idx, kv_idx, masked: bool, with_grad=False):
  """Scores s [B, K, G, bq, bkv] (raw q.k, fp32) -> logits z, masked to -inf if `masked`.

  q_idx [bq], kv_idx [bkv] are indices. With `with_grad`, also returns dz/ds (or None).
  """
  s = s * call.scale
  qi, kj = q_idx[:, None], kv_idx[None, :]
  z, dz_ds = s, None
  if call.score_mod.active:
    bias = (_score_tile(call.bias, q_idx[0], kv_idx[0], call.bq, call.bkv)
            if call.bias is not None else None)
    z, dz_ds = call.score_mod.logits(s, bias=bias, q_pos=qi + call.pos.offset, kv_pos=kj,
                                     slope=call.slopes, with_grad=True)
  if masked:
    vis = call.spec.visible(qi, kj, call.pos)
    if call.q_seg is not None:
      q_seg = lax.dynamic_slice_in_dim(call.q_seg, q_idx[0], call.bq, axis=1)
      kv_seg = lax.dynamic_slice_in_dim(call.kv_seg, kv_idx[0], call.bkv, axis=1)
      vis = vis & (q_seg[:, None, None, :, None] == kv_seg[:, None, None, None, :])
    if call.mask is not None:
      vis = vis & _score_tile(call.mask, q_idx[0], kv_idx[0], call.bq, call.bkv)
    if call.obj_ids is not None:
      vis = vis & call.obj_blocks[call.obj_ids[q_idx[0] // call.bq, kv_idx[0] // call.bkv]]
    z = jnp.where(vis, z, -jnp.inf)
  return (z, dz_ds) if with_grad else z


def _keep(call: _Call, q_idx, kv_idx):
  """The dropout keep mask [B, K, G, bq, bkv] of a tile (the kernels' hash, bit for bit)."""
  return dropout.keep(call.seeds, q_idx[:, None], kv_idx[None, :], call.score_mod.dropout_rate)


def _fold(call: _Call, start, transpose: bool, body, carry, lists):
  """Folds `body` over the tiles of the block row (or column) at `start`."""
  if lists is not None:
    count, index, full = lists
    r = start // (call.bkv if transpose else call.bq)
    return schedule.fold_tile_list(count[r], full[r], lambda t: index[r, t], body, carry)
  spec, pos = call.spec, call.pos
  if transpose:
    def tiles(p):
      return spec.q_tiles(start, call.bkv, call.bq, p)
  else:
    def tiles(p):
      return spec.kv_tiles(start, call.bq, call.bkv, p)
  if not spec.dynamic_positions:
    return masks.fold_tiles(tiles(pos), body, carry)
  batch = next(x.shape[0] for x in call.flat if not isinstance(x, int))
  per_batch = jax.vmap(tiles)(Positions(*(jnp.broadcast_to(x, (batch,)) for x in call.flat)))
  # One range for the whole batch: visit what any element visits, unmasked only what
  # every element sees in full.
  union = masks.TileRange(jnp.min(per_batch.lo), jnp.max(per_batch.full_lo),
                          jnp.min(per_batch.full_hi), jnp.max(per_batch.hi))
  return masks.fold_tiles(masks.ordered(*union), body, carry)


def _lists(call: _Call, operands: Operands, transpose: bool):
  """The batch's union tile list [R, C] for calls with runtime tile classes, else None."""
  spec = call.spec
  if not spec.uses_tile_lists:
    return None
  if spec.static_tiles:  # a trace-time constant (a mask object alone)
    count, index, full = schedule.tile_lists(spec, call.bq, call.bkv, batch=1,
                                          positions=call.flat, transpose=transpose)
    return count[0], index[0], full[0]
  batch = next(x.shape[0] for x in (*operands[:5], operands.mask) if x is not None)
  kind = schedule.tile_classes(spec, call.bq, call.bkv, batch=batch, positions=call.flat,
                            q_segment_ids=operands.q_segment_ids,
                            kv_segment_ids=operands.kv_segment_ids, mask=operands.mask,
                            transpose=transpose)
  union = jnp.where(jnp.any(kind != masks.SKIP, axis=0),
                    jnp.where(jnp.all(kind == masks.FULL, axis=0), masks.FULL, masks.MASKED),
                    masks.SKIP)
  count, index, full = schedule.compact(union[None])
  return count[0], index[0], full[0]


def forward(q, k, v, operands: Operands, *, scale: float, spec: MaskSpec,
            score_mod: ScoreMod, config: XlaConfig):
  """Blockwise forward pass in pure JAX.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; all one float dtype.
    operands: the runtime operands of the variants.
    scale: multiplies q.k.
    spec, score_mod: the mask and score modification.
    config: `block_q` and `block_kv` are the tile sizes.

  Returns:
    (out [B, T, N, H] in q.dtype, lse [B, T, N] float32, natural log); a query row
    that sees no key gets out 0 and lse -inf.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  call, nq, nkv = _setup(spec, score_mod, scale, config, operands, b, kv_heads, g)
  bq, bkv = call.bq, call.bkv
  prec = _precision(q.dtype)
  q_tiles = _pad_to(q, 1, nq * bq).reshape(b, nq, bq, kv_heads, g, h).swapaxes(0, 1)
  k, v = (_pad_to(x, 1, nkv * bkv) for x in (k, v))
  lists = _lists(call, operands, transpose=False)

  def one_q_tile(args):
    i, qi = args  # qi [B, bq, K, G, H]
    q_idx = i * bq + jnp.arange(bq)

    def body(j, carry, masked):
      acc, m, l = carry
      kj = lax.dynamic_slice_in_dim(k, j * bkv, bkv, axis=1)
      vj = lax.dynamic_slice_in_dim(v, j * bkv, bkv, axis=1)
      s = jnp.einsum("bqkgh,bskh->bkgqs", qi, kj, precision=prec,
                     preferred_element_type=jnp.float32)
      z = _logits(call, s, q_idx, j * bkv + jnp.arange(bkv), masked)
      m_new = jnp.maximum(m, z.max(-1))
      m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
      alpha = jnp.exp(m - m_use)
      p = jnp.exp(z - m_use[..., None])
      l = l * alpha + p.sum(-1)
      if call.seeds is not None:  # after the row sum: l normalises the undropped softmax
        p = jnp.where(_keep(call, q_idx, j * bkv + jnp.arange(bkv)), p, 0.0)
      pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(v.dtype), vj, precision=prec,
                      preferred_element_type=jnp.float32)
      return acc * alpha[..., None] + pv, m_new, l

    shape = (b, kv_heads, g, bq)
    init = (jnp.zeros(shape + (h,), jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32),
            jnp.zeros(shape, jnp.float32))
    acc, m, l = _fold(call, i * bq, False, body, init, lists)
    empty = l == 0
    if spec.q_lengths:  # padded query rows: out 0, lse -inf
      empty = empty | (q_idx >= call.flat.q_len[:, None, None, None])
    r = dropout.scale(score_mod.dropout_rate)
    out = jnp.where(empty[..., None], 0.0, acc * (r / jnp.where(empty, 1.0, l))[..., None])
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return out.astype(q.dtype), lse

  out, lse = lax.map(one_q_tile, (jnp.arange(nq, dtype=jnp.int32), q_tiles))
  # out [nq, B, K, G, bq, H] -> [B, T, N, H]; lse [nq, B, K, G, bq] -> [B, T, N]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, n, h)[:, :t]
  lse = lse.transpose(1, 0, 4, 2, 3).reshape(b, nq * bq, n)[:, :t]
  return out, lse


def backward(q, k, v, operands: Operands, lse, delta, do, *, scale: float, spec: MaskSpec,
             score_mod: ScoreMod, config: XlaConfig):
  """Blockwise backward pass in pure JAX, recomputing P from `lse`.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; do: [B, T, N, H] (dL/dout).
    operands: the runtime operands of the variants.
    lse: [B, T, N] float32 from the forward pass, +inf on rows that see no key.
    delta: [B, T, N] float32, rowsum(do * out) minus dL/dlse.
    scale, spec, score_mod: as in the forward pass.
    config: `block_q` and `block_kv` are the query and key tile sizes.

  Returns:
    (dq, dk, dv, dbias): dq, dk, dv in the dtypes and shapes of (q, k, v). dK/dV sum over
    the query heads of each GQA group inside the loop, so no atomics are needed and the
    result is deterministic. dbias is None, or with ``score_mod.bias_grad`` float32
    dL/dbias as a full [B, N, T, S] array (the caller sums it to the bias's shape).
  """
  b, t, n, h = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  call, nq, nkv = _setup(spec, score_mod, scale, config, operands, b, kv_heads, g)
  bq, bkv = call.bq, call.bkv
  prec = _precision(q.dtype)

  def grouped(x, size):  # [B, T, N, ...] -> padded [B, T', K, G, ...]
    x = _pad_to(x, 1, size)
    return x.reshape(b, size, kv_heads, g, *x.shape[3:])

  qg, dog = grouped(q, nq * bq), grouped(do, nq * bq)
  # Padded rows get lse=+inf, so their probabilities are exactly zero.
  lseg = grouped(jnp.pad(lse, ((0, 0), (0, nq * bq - t), (0, 0)), constant_values=jnp.inf),
                 nq * bq)
  deltag = grouped(delta, nq * bq)
  kp, vp = (_pad_to(x, 1, nkv * bkv) for x in (k, v))

  def grads(qi, kj, vj, doi, lse_i, delta_i, q_idx, kv_idx, masked):
    """(p, ds) [B, K, G, bq, bkv] float32: p as it multiplies V (dropped, with dropout),
    ds is dL/d(logits)."""
    s = jnp.einsum("bqkgh,bskh->bkgqs", qi, kj, precision=prec,
                   preferred_element_type=jnp.float32)
    z, dz_ds = _logits(call, s, q_idx, kv_idx, masked, with_grad=True)
    p = jnp.exp(z - lse_i.transpose(0, 2, 3, 1)[..., None])
    dp = jnp.einsum("bqkgh,bskh->bkgqs", doi, vj, precision=prec,
                    preferred_element_type=jnp.float32)
    p_v = p
    if call.seeds is not None:  # dropout: dV from the dropped P, dP through the same mask
      keep, r = _keep(call, q_idx, kv_idx), dropout.scale(score_mod.dropout_rate)
      p_v, dp = jnp.where(keep, p * r, 0.0), jnp.where(keep, dp * r, 0.0)
    ds = p * (dp - delta_i.transpose(0, 2, 3, 1)[..., None])
    return p_v, ds if dz_ds is None else ds * dz_ds

  def tile(x, start, size):
    return lax.dynamic_slice_in_dim(x, start, size, axis=1)

  dq_lists = _lists(call, operands, transpose=False)

  def one_q_tile(i):
    q_idx = i * bq + jnp.arange(bq)
    qi, doi = tile(qg, i * bq, bq), tile(dog, i * bq, bq)
    lse_i, delta_i = tile(lseg, i * bq, bq), tile(deltag, i * bq, bq)

    def body(j, carry, masked):
      dq, dbias = carry
      kj, vj = tile(kp, j * bkv, bkv), tile(vp, j * bkv, bkv)
      _, ds = grads(qi, kj, vj, doi, lse_i, delta_i, q_idx, j * bkv + jnp.arange(bkv), masked)
      if dbias is not None:  # dL/dbias = dL/dlogits; tiles never visited stay 0
        dbias = lax.dynamic_update_slice_in_dim(dbias, ds, j * bkv, axis=4)
      return dq + jnp.einsum("bkgqs,bskh->bqkgh", ds.astype(k.dtype), kj, precision=prec,
                             preferred_element_type=jnp.float32), dbias

    dbias = (jnp.zeros((b, kv_heads, g, bq, nkv * bkv), jnp.float32)
             if score_mod.bias_grad else None)
    dq, dbias = _fold(call, i * bq, False, body,
                      (jnp.zeros((b, bq, kv_heads, g, h), jnp.float32), dbias), dq_lists)
    return (dq * scale).astype(q.dtype), dbias

  dkv_lists = _lists(call, operands, transpose=True)

  def one_kv_tile(j):
    kv_idx = j * bkv + jnp.arange(bkv)
    kj, vj = tile(kp, j * bkv, bkv), tile(vp, j * bkv, bkv)

    def body(i, carry, masked):
      dk, dv = carry
      qi, doi = tile(qg, i * bq, bq), tile(dog, i * bq, bq)
      lse_i, delta_i = tile(lseg, i * bq, bq), tile(deltag, i * bq, bq)
      p, ds = grads(qi, kj, vj, doi, lse_i, delta_i, i * bq + jnp.arange(bq), kv_idx, masked)
      dv = dv + jnp.einsum("bkgqs,bqkgh->bskh", p.astype(do.dtype), doi, precision=prec,
                           preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bkgqs,bqkgh->bskh", ds.astype(q.dtype), qi, precision=prec,
                           preferred_element_type=jnp.float32)
      return dk, dv

    zeros = jnp.zeros((b, bkv, kv_heads, h), jnp.float32)
    dk, dv = _fold(call, j * bkv, True, body, (zeros, zeros), dkv_lists)
    return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

  dq, dbias = lax.map(one_q_tile, jnp.arange(nq, dtype=jnp.int32))  # [nq, B, bq, K, G, H]
  dq = dq.swapaxes(0, 1).reshape(b, nq * bq, n, h)[:, :t]
  if dbias is not None:  # [nq, B, K, G, bq, S'] -> [B, N, T, S]
    dbias = dbias.transpose(1, 2, 3, 0, 4, 5).reshape(b, n, nq * bq, -1)[:, :, :t, :s_len]
  dk, dv = lax.map(one_kv_tile, jnp.arange(nkv, dtype=jnp.int32))  # [nkv, B, bkv, K, H]
  dk, dv = (x.swapaxes(0, 1).reshape(b, nkv * bkv, kv_heads, h)[:, :s_len] for x in (dk, dv))
  return dq, dk, dv, dbias
