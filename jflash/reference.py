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


def dense_attention(q, k, v, *, scale: float, is_causal: bool):
  """Exact attention in float32 with the whole score matrix; the test oracle.

  Args:
    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0 (GQA: query head n reads
      key/value head n // (N // K)). Any float dtype; computed in float32 at
      `lax.Precision.HIGHEST`.
    scale: multiplies q.k before the softmax.
    is_causal: top-left aligned causal mask: query i sees key j iff j <= i.

  Returns:
    (out, lse): out [B, T, N, H] float32, lse [B, T, N] float32 (natural log).
    A query row that sees no key gives out = 0 and lse = -inf.
  """
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  t, s = q.shape[1], k.shape[1]
  groups = q.shape[2] // k.shape[2]
  k = jnp.repeat(k, groups, axis=2)
  v = jnp.repeat(v, groups, axis=2)
  scores = jnp.einsum("btnh,bsnh->bnts", q, k, precision=lax.Precision.HIGHEST) * scale
  query_index = jnp.arange(t)[:, None]
  key_index = jnp.arange(s)[None, :]
  visible = key_index <= query_index if is_causal else jnp.ones((t, s), bool)
  scores = jnp.where(visible, scores, -jnp.inf)
  lse = jax.nn.logsumexp(scores, axis=-1)
  safe_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
  p = jnp.where(visible, jnp.exp(scores - safe_lse[..., None]), 0.0)
  out = jnp.einsum("bnts,bsnh->btnh", p, v, precision=lax.Precision.HIGHEST)
  return out, jnp.moveaxis(lse, 1, 2)
