"""The dense fp32 oracle that every backend is tested against.

`dense_attention` materialises the T x S scores in float32 at HIGHEST precision and
builds its mask from explicit index comparisons. It shares no code with any backend
(not even :mod:`jflash.masks`), so a bug in the code the kernels share cannot hide in
the oracle too. It is never used by :func:`jflash.attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def dense_attention(q, k, v, *, scale, is_causal=False, bias=None, mask=None,
                    query_seq_lengths=None, key_value_seq_lengths=None,
                    local_window_size=None, q_segment_ids=None, kv_segment_ids=None,
                    q_offset=0, logits_soft_cap=None, alibi_slopes=None,
                    dropout_keep=None, dropout_rate=0.0, dtype=jnp.float32):
  """Exact attention with the whole score matrix; the test oracle.

  Shapes: q [B, T, N, H]; k, v [B, S, K, H] with N % K == 0 (GQA: query head n reads
  key/value head n // (N // K)). Query index i sits at position i + q_offset[b], key
  index j at position j.

  Query (b, n, i) sees key j iff every mask that is given allows it:

    is_causal              j <= i + q_offset[b]
    local_window_size      i + q_offset[b] - left <= j <= i + q_offset[b] + right, for
                           (left, right); an int w means (w, w); a None side is unbounded
    query_seq_lengths      i < query_seq_lengths[b]                    ([B] int32)
    key_value_seq_lengths  j < key_value_seq_lengths[b]                ([B] int32)
    q/kv_segment_ids       q_segment_ids[b, i] == kv_segment_ids[b, j] ([B, T], [B, S]);
                           kv_segment_ids defaults to q_segment_ids (then T == S)
    mask                   mask[b, n, i, j], bool broadcastable to [B, N, T, S]

  For example T = 3, S = 6, q_offset = 2, is_causal, local_window_size = (2, None)
  (x: attends; query row i at position i + 2):

    j:   0 1 2 3 4 5
    i=0  x x x . . .
    i=1  . x x x . .
    i=2  . . x x x .

  Logits, in float32: z = scale * q.k + bias (bias broadcastable to [B, N, T, S]); then
  z = c * tanh(z / c) if logits_soft_cap = c; then z -= slope[b, n] * |i + q_offset[b] - j|
  if alibi_slopes ([N] or [B, N]) is given. lse = logsumexp of z over the visible keys,
  p = exp(z - lse) there and 0 elsewhere; out = p @ v, or (p * dropout_keep /
  (1 - dropout_rate)) @ v if dropout_keep (bool [B, N, T, S], True = keep) is given (lse
  stays that of the undropped softmax). A row that sees no key gives out = 0 and
  lse = -inf, and passes exactly zero (never NaN) gradient to q, k, v and bias.

  Args:
    q, k, v: see above. Any float dtype.
    scale: multiplies q.k.
    q_offset: Python int or int32 array [B] (may be traced).
    logits_soft_cap: None or a float.
    dtype: float32 (default): the oracle. q, k, v and bias are cast to float32 and both
      matmuls run at `lax.Precision.HIGHEST`. Or the inputs' 16-bit dtype (bfloat16 or
      float16): a comparator that rounds where `jax.nn.dot_product_attention(
      implementation="xla")` does. q, k, v are cast to `dtype`; q.k takes products of
      `dtype` values with float32 accumulation (`preferred_element_type=float32`, like
      jax.nn's BF16_BF16_F32 / F16_F16_F32 preset), so the logits are float32, and scale,
      bias, soft-cap, ALiBi, masking, softmax and lse all stay float32 as in the oracle.
      Then p (after the dropout scaling) is rounded to `dtype`, p @ v accumulates in
      float32 (jax.nn leaves that to the backend, which accumulates in float32 too), and
      out is rounded to `dtype`. With q, k, v already in `dtype`, those two roundings (p
      and out) are the only ones in the forward pass. Unlike jax.nn, whose lse residual
      is rounded to `dtype`, lse is returned in float32, unrounded.
      Gradients are what autodiff makes of that (cotangents of p and of q, k, v in
      `dtype`).

  Returns:
    (out, lse): out [B, T, N, H] in `dtype`; lse [B, T, N] float32 (natural log).
  """
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  groups = n // kv_heads
  f32 = jnp.float32
  if jnp.dtype(dtype) == f32:
    matmul = dict(precision=lax.Precision.HIGHEST, preferred_element_type=f32)
  else:
    matmul = dict(preferred_element_type=f32)
  q, k, v = (x.astype(dtype) for x in (q, k, v))

  # Logits [B, N, T, S]; query head n = kv_head * groups + g reads kv head n // groups.
  qg = q.reshape(b, t, kv_heads, groups, h)
  z = jnp.einsum("btkgh,bskh->bkgts", qg, k, **matmul).reshape(b, n, t, s) * scale
  if bias is not None:
    z = z + bias.astype(f32)
  if logits_soft_cap is not None:
    z = logits_soft_cap * jnp.tanh(z / logits_soft_cap)

  # Index grids, broadcastable to [B, N, T, S].
  i = jnp.arange(t)[None, None, :, None]
  j = jnp.arange(s)[None, None, None, :]
  q_pos = i + jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1, 1, 1))

  if alibi_slopes is not None:
    slopes = jnp.reshape(jnp.asarray(alibi_slopes, f32), (-1, n, 1, 1))
    z = z - slopes * jnp.abs(q_pos - j).astype(f32)

  visible = jnp.ones((1, 1, t, s), bool)
  if is_causal:
    visible &= j <= q_pos
  if local_window_size is not None:
    left, right = (local_window_size if isinstance(local_window_size, (tuple, list))
                   else (local_window_size, local_window_size))
    if left is not None:
      visible &= q_pos - left <= j
    if right is not None:
      visible &= j <= q_pos + right
  if query_seq_lengths is not None:
    visible &= i < jnp.reshape(query_seq_lengths, (b, 1, 1, 1))
  if key_value_seq_lengths is not None:
    visible &= j < jnp.reshape(key_value_seq_lengths, (b, 1, 1, 1))
  if q_segment_ids is not None:
    kv_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    visible &= q_segment_ids[:, None, :, None] == kv_ids[:, None, None, :]
  if mask is not None:
    visible &= mask

  # Softmax over the visible keys. Double where: an empty row has sum 0, and log(0) or
  # exp(-inf - -inf) would send NaN (inf * 0) back through the branch `where` discards.
  z = jnp.where(visible, z, -jnp.inf)
  row_max = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  total = jnp.sum(jnp.exp(z - row_max), axis=-1, keepdims=True)
  empty = total == 0
  lse = jnp.where(empty, -jnp.inf, row_max + jnp.log(jnp.where(empty, 1.0, total)))
  p = jnp.where(visible, jnp.exp(z - jnp.where(empty, 0.0, lse)), 0.0)
  if dropout_keep is not None:
    p = p * dropout_keep / (1.0 - dropout_rate)

  p = p.astype(dtype).reshape(b, kv_heads, groups, t, s)
  out = jnp.einsum("bkgts,bskh->btkgh", p, v, **matmul).reshape(b, t, n, h)
  return out.astype(dtype), jnp.moveaxis(lse[..., 0], 1, 2)
