"""`attention_fn`: :func:`jflash.attention` with the signature of Flax's ``dot_product_attention``.

Re-exported as :func:`jflash.nn.attention_fn`. This module only calls :func:`jflash.attention`;
it never imports a kernel.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from flax.nnx.nn import dtypes as nnx_dtypes

import jflash
import jflash.masks


def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout: bool = True,
                 dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = False,
                 dtype=None, precision=None, module=None,
                 promote_dtype=nnx_dtypes.promote_dtype, is_causal: bool = False,
                 force_fp32_for_softmax: bool = False, qk_attn_weights_einsum=None,
                 attn_weights_value_einsum=None, input_positions=None, *,
                 query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                 q_segment_ids=None, kv_segment_ids=None, q_offset=0, logits_soft_cap=None,
                 alibi_slopes=None, implementation: str | None = None,
                 config: jflash.AttentionConfig | None = None,
                 deterministic_backward: bool = True):
  """FlashAttention with the signature of Flax's ``dot_product_attention``.

  Pass it as ``attention_fn=jflash.nn.attention_fn`` to ``nnx.MultiHeadAttention`` or
  ``linen.MultiHeadDotProductAttention`` (use ``functools.partial`` to set
  `implementation`, `config` or `deterministic_backward`). It takes exactly the keyword
  arguments Flax passes.

  Masks. A `mask` in Flax's layout ([batch..., N or 1, T, S], True or nonzero: attend),
  e.g. from ``nnx.make_attention_mask`` (padding) or ``nnx.make_causal_mask``, is applied
  by the kernel as a dense mask. A *concrete* mask (not traced: called outside ``jit``, or
  a constant) that equals the causal lower triangle (query i sees keys j <= i) for every
  batch element and head, as ``nnx.make_causal_mask`` builds, is recognised (one
  reduction over it) and run as ``is_causal=True``: the causal tiles are skipped and no
  T x S mask is read. Under ``jit`` the mask is a tracer whose values are unknown, so it
  runs as a dense mask: the same result, slower; pass ``is_causal=True`` instead of the
  mask there. A ``jflash.masks`` object (``jflash.masks.Causal()``, ``LocalWindow``, ...)
  as `mask` is passed through as is (block-sparse attention).

  Dropout (``dropout_rate > 0`` and not `deterministic`) runs fused in the kernel, keyed
  by `dropout_rng`, dropping each (batch, head, query, key) probability independently
  (with several batch dims, the index of the flattened batch). Flax's default
  ``broadcast_dropout=True`` draws one T x S dropout mask shared by every batch element
  and head; jflash's counter-based dropout has no such mode, and a different
  distribution would be a different model, so that raises ``NotImplementedError``:
  construct the layer with ``broadcast_dropout=False``.

  Decoding over a KV cache (``decode=True`` in those layers) is not supported yet: Flax
  then passes one query against all `S` cached keys with a mask it builds itself, and
  this function raises ``NotImplementedError`` saying so. Decode with Flax's default
  ``attention_fn``; the same parameters load into it.

  Args:
    query: [batch..., T, N, H].
    key, value: [batch..., S, K, H], N % K == 0.
    bias: None, or a float array broadcastable to [batch..., N, T, S] (Flax's layout),
      added to the scaled logits; differentiable (see :func:`jflash.attention`).
    mask: None, an array broadcastable to [batch..., N, T, S] (bool, or numeric with
      nonzero meaning attend, as Flax's float masks), or a ``jflash.masks`` mask object.
    broadcast_dropout: must be False when dropout is active (see above).
    dropout_rng: a JAX PRNG key; needed when dropout is active.
    dropout_rate: the dropout probability, in [0, 1).
    deterministic: True turns dropout off.
    dtype: computation dtype; q, k, v are promoted to it with `promote_dtype`.
    precision: accepted for compatibility: products are always exact with fp32
      accumulation, which meets any `jax.lax.Precision`.
    module: must be None (``sow_weights=True`` asks for the T x S weights, which a
      FlashAttention kernel never forms).
    promote_dtype: Flax's dtype promotion function.
    is_causal: top-left aligned causal mask (query i sees keys j <= i, as in
      ``jax.nn.dot_product_attention``); needs T >= S (see Raises). Combines with `mask`.
    force_fp32_for_softmax: accepted: the softmax is always computed in fp32.
    qk_attn_weights_einsum, attn_weights_value_einsum: must be None (quantised einsums).
    input_positions: must be None; use :class:`jflash.nn.FlashSelfAttention` with
      `rope_theta` (and its `positions`).
    query_seq_lengths, key_value_seq_lengths, local_window_size, q_segment_ids,
    kv_segment_ids, q_offset, logits_soft_cap, alibi_slopes: the variants of
      :func:`jflash.attention`, forwarded (with several leading batch dims, their batch
      dims are flattened like q's).
    implementation, config: forwarded to :func:`jflash.attention`.
    deterministic_backward: :func:`jflash.attention`'s `deterministic` (Flax's
      `deterministic` above is about dropout): True for gradients bitwise identical run
      to run, False to let a backend sum dQ in any order where that is faster.

  Returns:
    [batch..., T, N, H] in the promoted dtype. A query that no key is visible to (e.g.
    a padding query row that `mask` hides entirely) gives 0, jflash's convention, where
    Flax's ``dot_product_attention`` gives the mean of all values; the other rows agree.

  Raises:
    NotImplementedError: for any argument above that cannot be honoured, naming it;
      ``broadcast_dropout=True`` with dropout active; what looks like decoding over a KV
      cache (one query against S > 1 keys with a mask, as Flax's ``decode=True``
      passes); and `is_causal` with T < S, where a top-left aligned mask would be wrong
      for a KV cache (the queries are the last T positions there, not the first).
    ValueError: `dropout_rate` outside [0, 1); dropout active with `dropout_rng` None;
      a `bias` or `mask` not broadcastable to [batch..., N, T, S]; and from
      :func:`jflash.attention` for bad shapes or dtypes.

  Example::

    >>> from flax import nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False,
    ...                                attention_fn=jflash.nn.attention_fn, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 16, 64))
    >>> layer(x, is_causal=True).shape
    (2, 16, 64)
    >>> layer(x, mask=nnx.make_causal_mask(jnp.ones((2, 16)))).shape  # runs as is_causal
    (2, 16, 64)
  """
  del precision, force_fp32_for_softmax
  t, s = query.shape[-3], key.shape[-3]
  if mask is not None and t == 1 and s > 1:
    raise NotImplementedError(
        f"jflash.nn.attention_fn: mask: 1 query against {s} keys with a mask is what Flax's "
        "decode=True passes (a mask Flax builds over its KV cache, whether or not you passed "
        f"one): {NO_KV_CACHE}")
  if is_causal and t < s:
    raise NotImplementedError(
        f"jflash.nn.attention_fn: is_causal with fewer queries (T={t}) than keys (S={s}): "
        "jflash's causal mask is top-left aligned (query i sees keys j <= i), which is wrong "
        "for a KV cache, where the queries are the last T positions; "
        f"{NO_KV_CACHE}")
  unsupported = {
      "module (sow_weights=True)": module is not None,
      "qk_attn_weights_einsum": qk_attn_weights_einsum is not None,
      "attn_weights_value_einsum": attn_weights_value_einsum is not None,
      "input_positions": input_positions is not None,
  }
  reasons = {
      "module (sow_weights=True)": "FlashAttention never forms the attention weights to sow",
      "qk_attn_weights_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "attn_weights_value_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "input_positions": "RoPE positions: use jflash.nn.FlashSelfAttention(rope_theta=...) "
                         "and pass positions=... to its call",
  }
  for name, bad in unsupported.items():
    if bad:
      raise NotImplementedError(f"jflash.nn.attention_fn: {name}: {reasons[name]}")
  dropout_rate, dropout_rng = _dropout(dropout_rate, dropout_rng, deterministic,
                                       broadcast_dropout)
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  batch, n = query.shape[:-3], query.shape[-2]
  if mask is not None and not isinstance(mask, jflash.masks.Mask):
    if _is_causal_triangle(mask, t, s):
      mask, is_causal = None, True
    else:
      mask = _scores_operand("mask", mask, batch, n, t, s)
      if not jnp.issubdtype(mask.dtype, jnp.bool_):
        mask = mask != 0  # Flax's jnp.where(mask, ...): nonzero attends.
  if bias is not None:
    bias = _scores_operand("bias", bias, batch, n, t, s)
  return _attention_any_batch(
      query, key, value, bias=bias, mask=mask, is_causal=is_causal,
      implementation=implementation, config=config, deterministic=deterministic_backward,
      local_window_size=local_window_size,
      logits_soft_cap=logits_soft_cap, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      batched=dict(query_seq_lengths=query_seq_lengths,
                   key_value_seq_lengths=key_value_seq_lengths, q_segment_ids=q_segment_ids,
                   kv_segment_ids=kv_segment_ids, q_offset=q_offset,
                   alibi_slopes=alibi_slopes))


NO_KV_CACHE = (
    "decoding over a KV cache is not supported by jflash yet; to decode, use Flax's "
    "nnx.MultiHeadAttention (or linen.MultiHeadDotProductAttention) with decode=True and its "
    "default attention_fn: the same parameters load into it")


def _dropout(rate, rng, deterministic, broadcast_dropout):
  """(rate, rng) for jflash.attention: (0.0, None) when no dropout is applied.

  Raises:
    ValueError: `rate` is not a number in [0, 1), or dropout is active with `rng` None.
    NotImplementedError: dropout is active with `broadcast_dropout`.
  """
  if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
      or not 0.0 <= float(rate) < 1.0):
    raise ValueError(f"jflash.nn.attention_fn: dropout_rate={rate!r} must be a number in [0, 1)")
  if rate == 0.0 or deterministic:
    return 0.0, None
  if rng is None:
    raise ValueError(
        f"jflash.nn.attention_fn: dropout_rng is None, but dropout_rate={rate} with "
        "deterministic=False needs a JAX PRNG key (as Flax's dot_product_attention does)")
  if broadcast_dropout:
    raise NotImplementedError(
        f"jflash.nn.attention_fn: broadcast_dropout=True with dropout_rate={rate}: Flax's "
        "broadcast dropout shares one T x S mask across all batch elements and heads, but "
        "jflash drops each (batch, head, query, key) probability independently; construct "
        "the layer with broadcast_dropout=False (nnx.MultiHeadAttention, "
        "linen.MultiHeadDotProductAttention, jflash.nn.FlashSelfAttention) for that, or use "
        "Flax's default attention_fn for broadcast dropout")
  return float(rate), rng


def _is_causal_triangle(mask, t: int, s: int) -> bool:
  """Whether `mask` is concrete and, for every batch element and head, the lower triangle
  (query i sees key j iff j <= i; nonzero counts as True). A traced mask gives False."""
  if isinstance(mask, jax.core.Tracer) or not hasattr(mask, "shape"):
    return False
  if len(mask.shape) < 2 or tuple(mask.shape[-2:]) != (t, s):
    return False
  if isinstance(mask, jax.Array) and not mask.is_fully_addressable:
    return False
  with jax.ensure_compile_time_eval():  # A constant inside an outer trace: still concrete.
    visible = jnp.asarray(mask) != 0
    return bool(jnp.all(visible == jnp.tril(jnp.ones((t, s), bool))))


def _scores_operand(name, x, batch, n, t, s):
  """A bias or mask in Flax's layout, broadcastable to [*batch, N, T, S], as one
  broadcastable to [B, N, T, S] with B = prod(batch) (unchanged with no batch dims).

  Raises:
    ValueError: `x` is not broadcastable to [*batch, N, T, S].
  """
  x = x if isinstance(x, jax.Array) else jnp.asarray(x)
  full = (*batch, n, t, s)
  try:
    shape = jnp.broadcast_shapes(x.shape, full)
  except ValueError:
    shape = None
  if shape != full:
    raise ValueError(f"jflash.nn.attention_fn: {name}.shape={x.shape} must be broadcastable "
                     f"to [batch..., N, T, S] = {full}")
  if len(batch) <= 1:
    return x
  x = x.reshape((1,) * (len(full) - x.ndim) + x.shape)
  rest = x.shape[len(batch):]
  if all(d == 1 for d in x.shape[:len(batch)]):
    return x.reshape(1, *rest)
  return jnp.broadcast_to(x, (*batch, *rest)).reshape(math.prod(batch), *rest)


def _attention_any_batch(q, k, v, *, batched, **kwargs):
  """jflash.attention over any number of leading batch dims (Flax allows several).

  `batched` holds the per-batch operands: arrays whose leading dims are q's batch dims
  are flattened with them; anything else (None, an int q_offset, [N] slopes) passes as is.
  """
  if q.ndim <= 4:
    return jflash.attention(q, k, v, **kwargs, **batched)
  batch = q.shape[:-3]
  flat = lambda x: x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])

  def flat_operand(x):
    if hasattr(x, "shape") and tuple(x.shape[:len(batch)]) == batch:
      return x.reshape(math.prod(batch), *x.shape[len(batch):])
    return x

  out = jflash.attention(flat(q), flat(k), flat(v), **kwargs,
                         **{name: flat_operand(x) for name, x in batched.items()})
  return out.reshape(*batch, *out.shape[1:])


__all__ = ["attention_fn"]
