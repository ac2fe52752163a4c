"""The ``implementation="xla"`` backend: blockwise attention in pure JAX.

`forward` / `backward` follow the FlashAttention-2
algorithm (Dao 2023, Algorithms 1 and 2) written with `lax.map` over query (or key)
tiles and `lax.fori_loop` over the tiles they see, so memory stays linear in T and S
and tiles above the causal diagonal are never computed. It runs wherever XLA does.
"""

from __future__ import annotations


import jax.numpy as jnp
from jax import lax

from jflash.masks import MaskSpec, fold_tiles
from jflash.kernels.xla.config import XlaConfig


def _precision(dtype):
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _pad_to(x, axis: int, size: int):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _tiles(spec: MaskSpec, config: XlaConfig):
  return min(config.block_q, spec.q_len), min(config.block_kv, spec.kv_len)


def forward(q, k, v, *, scale: float, spec: MaskSpec, config: XlaConfig):
  """Blockwise forward pass in pure JAX.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; all one float dtype.
    scale: multiplies q.k.
    spec: the mask.
    config: `block_q` and `block_kv` are the tile sizes.

  Returns:
    (out [B, T, N, H] in q.dtype, lse [B, T, N] float32, natural log).
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  bq, bkv = _tiles(spec, config)
  nq, nkv = -(-t // bq), -(-spec.kv_len // bkv)
  prec = _precision(q.dtype)
  q_tiles = _pad_to(q, 1, nq * bq).reshape(b, nq, bq, kv_heads, g, h).swapaxes(0, 1)
  k, v = (_pad_to(x, 1, nkv * bkv) for x in (k, v))

  def one_q_tile(args):
    i, qi = args  # qi [B, bq, K, G, H]
    q_pos = i * bq + jnp.arange(bq)

    def body(j, carry, masked):
      acc, m, l = carry
      kj = lax.dynamic_slice_in_dim(k, j * bkv, bkv, axis=1)
      vj = lax.dynamic_slice_in_dim(v, j * bkv, bkv, axis=1)
      s = jnp.einsum("bqkgh,bskh->bkgqs", qi, kj, precision=prec,
                     preferred_element_type=jnp.float32) * scale
      if masked:
        vis = spec.visible(q_pos[:, None], j * bkv + jnp.arange(bkv)[None, :])
        s = jnp.where(vis, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
      alpha = jnp.exp(m - m_use)
      p = jnp.exp(s - m_use[..., None])
      l = l * alpha + p.sum(-1)
      pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(v.dtype), vj, precision=prec,
                      preferred_element_type=jnp.float32)
      return acc * alpha[..., None] + pv, m_new, l

    shape = (b, kv_heads, g, bq)
    init = (jnp.zeros(shape + (h,), jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32),
            jnp.zeros(shape, jnp.float32))
    acc, m, l = fold_tiles(spec.kv_tiles(i * bq, bq, bkv), body, init)
    out = acc / jnp.where(l == 0, 1.0, l)[..., None]
    lse = jnp.where(l == 0, -jnp.inf, m + jnp.log(l))
    return out.astype(q.dtype), lse

  out, lse = lax.map(one_q_tile, (jnp.arange(nq, dtype=jnp.int32), q_tiles))
  # out [nq, B, K, G, bq, H] -> [B, T, N, H]; lse [nq, B, K, G, bq] -> [B, T, N]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, n, h)[:, :t]
  lse = lse.transpose(1, 0, 4, 2, 3).reshape(b, nq * bq, n)[:, :t]
  return out, lse


def backward(q, k, v, lse, delta, do, *, scale: float, spec: MaskSpec, config: XlaConfig):
  """Blockwise backward pass in pure JAX, recomputing P from `lse`.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H]; do: [B, T, N, H] (dL/dout).
    lse: [B, T, N] float32 from the forward pass.
    delta: [B, T, N] float32, rowsum(do * out) minus dL/dlse.
    scale, spec: as in the forward pass.
    config: `block_q` and `block_kv` are the query and key tile sizes.

  Returns:
    (dq, dk, dv) in the dtypes and shapes of (q, k, v). dK/dV sum over the query heads of
    each GQA group inside the loop, so no atomics are needed and the result is
    deterministic.
  """
  b, t, n, h = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  bq, bkv = _tiles(spec, config)
  nq, nkv = -(-t // bq), -(-s_len // bkv)
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

  def probs(qi, kj, lse_i, vis):  # -> p [B, K, G, bq, bkv] float32
    s = jnp.einsum("bqkgh,bskh->bkgqs", qi, kj, precision=prec,
                   preferred_element_type=jnp.float32) * scale
    p = jnp.exp(s - lse_i.transpose(0, 2, 3, 1)[..., None])
    return p if vis is None else jnp.where(vis, p, 0.0)

  def dscores(p, doi, vj, delta_i):
    dp = jnp.einsum("bqkgh,bskh->bkgqs", doi, vj, precision=prec,
                    preferred_element_type=jnp.float32)
    return p * (dp - delta_i.transpose(0, 2, 3, 1)[..., None])

  def tile(x, start, size):
    return lax.dynamic_slice_in_dim(x, start, size, axis=1)

  def one_q_tile(i):
    q_pos = i * bq + jnp.arange(bq)
    qi, doi = tile(qg, i * bq, bq), tile(dog, i * bq, bq)
    lse_i, delta_i = tile(lseg, i * bq, bq), tile(deltag, i * bq, bq)

    def body(j, dq, masked):
      kj, vj = tile(kp, j * bkv, bkv), tile(vp, j * bkv, bkv)
      vis = spec.visible(q_pos[:, None], j * bkv + jnp.arange(bkv)[None, :]) if masked else None
      p = probs(qi, kj, lse_i, vis)
      ds = dscores(p, doi, vj, delta_i)
      return dq + jnp.einsum("bkgqs,bskh->bqkgh", ds.astype(k.dtype), kj, precision=prec,
                             preferred_element_type=jnp.float32)

    dq = fold_tiles(spec.kv_tiles(i * bq, bq, bkv), body,
                    jnp.zeros((b, bq, kv_heads, g, h), jnp.float32))
    return (dq * scale).astype(q.dtype)

  def one_kv_tile(j):
    kv_pos = j * bkv + jnp.arange(bkv)
    kj, vj = tile(kp, j * bkv, bkv), tile(vp, j * bkv, bkv)

    def body(i, carry, masked):
      dk, dv = carry
      qi, doi = tile(qg, i * bq, bq), tile(dog, i * bq, bq)
      lse_i, delta_i = tile(lseg, i * bq, bq), tile(deltag, i * bq, bq)
      vis = spec.visible(i * bq + jnp.arange(bq)[:, None], kv_pos[None, :]) if masked else None
      p = probs(qi, kj, lse_i, vis)
      dv = dv + jnp.einsum("bkgqs,bqkgh->bskh", p.astype(do.dtype), doi, precision=prec,
                           preferred_element_type=jnp.float32)
      ds = dscores(p, doi, vj, delta_i)
      dk = dk + jnp.einsum("bkgqs,bqkgh->bskh", ds.astype(q.dtype), qi, precision=prec,
                           preferred_element_type=jnp.float32)
      return dk, dv

    zeros = jnp.zeros((b, bkv, kv_heads, h), jnp.float32)
    dk, dv = fold_tiles(spec.q_tiles(j * bkv, bkv, bq), body, (zeros, zeros))
    return (dk * scale).astype(k.dtype), dv.astype(v.dtype)

  dq = lax.map(one_q_tile, jnp.arange(nq, dtype=jnp.int32))  # [nq, B, bq, K, G, H]
  dq = dq.swapaxes(0, 1).reshape(b, nq * bq, n, h)[:, :t]
  dk, dv = lax.map(one_kv_tile, jnp.arange(nkv, dtype=jnp.int32))  # [nkv, B, bkv, K, H]
  dk, dv = (x.swapaxes(0, 1).reshape(b, nkv * bkv, kv_heads, h)[:, :s_len] for x in (dk, dv))
  return dq, dk, dv
