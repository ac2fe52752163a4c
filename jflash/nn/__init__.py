"""Flax layers on top of :func:`jflash.attention` (NNX here; linen in `jflash.nn.linen`).

* :class:`FlashSelfAttention` — a Flax NNX attention layer with the constructor, call and
  parameters of ``flax.nnx.MultiHeadAttention`` (it is a subclass: sub-modules
  ``query/key/value/out``, ``query_ln/key_ln`` with ``normalize_qk``), so an
  ``nnx.MultiHeadAttention`` checkpoint loads into it unchanged. Optional rotary
  position embedding (RoPE, Su et al. 2021) on q and k before the kernel.
* :func:`attention_fn` — a drop-in ``attention_fn`` for ``nnx.MultiHeadAttention`` and
  ``linen.MultiHeadDotProductAttention``.

Neither decodes over a KV cache yet (``decode=True``, ``init_cache``), nor applies a dense
mask or attention dropout: those raise ``NotImplementedError`` rather than compute
something else.

This module only calls :func:`jflash.attention`; it never imports a kernel.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes as nnx_dtypes
from flax.nnx.nn.linear import default_kernel_init

import jflash


def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout: bool = True,
                 dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = False,
                 dtype=None, precision=None, module=None,
                 promote_dtype=nnx_dtypes.promote_dtype, is_causal: bool = False,
                 force_fp32_for_softmax: bool = False, qk_attn_weights_einsum=None,
                 attn_weights_value_einsum=None, input_positions=None, *,
                 query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                 q_segment_ids=None, kv_segment_ids=None, q_offset=0, logits_soft_cap=None,
                 alibi_slopes=None, implementation: str | None = None,
                 config: jflash.AttentionConfig | None = None):
  """FlashAttention with the signature of Flax's ``dot_product_attention``.

  Pass it as ``attention_fn=jflash.nn.attention_fn`` to ``nnx.MultiHeadAttention`` or
  ``linen.MultiHeadDotProductAttention`` (use ``functools.partial`` to set
  `implementation` or `config`). It takes exactly the keyword arguments Flax passes.

  Decoding over a KV cache (``decode=True`` in those layers) is not supported yet: Flax
  then passes one query against all `S` cached keys with a mask it builds itself, and
  this function raises ``NotImplementedError`` saying so. Decode with Flax's default
  ``attention_fn``; the same parameters load into it.

  Args:
    query: [batch..., T, N, H].
    key, value: [batch..., S, K, H], N % K == 0.
    bias, mask: must be None: a dense [.., T, S] bias or mask (yours, or one Flax builds,
      e.g. for a KV cache) is not supported yet. Use `is_causal` for causal masking.
    broadcast_dropout, dropout_rng: unused when there is no dropout.
    dropout_rate, deterministic: dropout is not available yet: `dropout_rate` must be
      0 or `deterministic` True.
    dtype: computation dtype; q, k, v are promoted to it with `promote_dtype`.
    precision: accepted for compatibility: products are always exact with fp32
      accumulation, which meets any `jax.lax.Precision`.
    module: must be None (``sow_weights=True`` asks for the T x S weights, which a
      FlashAttention kernel never forms).
    promote_dtype: Flax's dtype promotion function.
    is_causal: top-left aligned causal mask (query i sees keys j <= i, as in
      ``jax.nn.dot_product_attention``); needs T >= S (see Raises).
    force_fp32_for_softmax: accepted: the softmax is always computed in fp32.
    qk_attn_weights_einsum, attn_weights_value_einsum: must be None (quantised einsums).
    input_positions: must be None; use :class:`FlashSelfAttention` with `rope_theta`
      (and its `positions`).
    query_seq_lengths, key_value_seq_lengths, local_window_size, q_segment_ids,
    kv_segment_ids, q_offset, logits_soft_cap, alibi_slopes: the variants of
      :func:`jflash.attention`, forwarded (with several leading batch dims, their batch
      dims are flattened like q's).
    implementation, config: forwarded to :func:`jflash.attention`.

  Returns:
    [batch..., T, N, H] in the promoted dtype.

  Raises:
    NotImplementedError: for any argument above that cannot be honoured, naming it; for
      what looks like decoding over a KV cache (one query against S > 1 keys with a
      mask, as Flax's ``decode=True`` passes); and for `is_causal` with T < S, where a
      top-left aligned mask would be wrong for a KV cache (the queries are the last T
      positions there, not the first).
    ValueError: from :func:`jflash.attention` for bad shapes or dtypes.

  Example::

    >>> from flax import nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False,
    ...                                attention_fn=jflash.nn.attention_fn, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 16, 64)), is_causal=True).shape
    (2, 16, 64)
  """
  del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax
  t, s = query.shape[-3], key.shape[-3]
  if mask is not None and t == 1 and s > 1:
    raise NotImplementedError(
        f"jflash.nn.attention_fn: mask: 1 query against {s} keys with a mask is what Flax's "
        "decode=True passes (a mask Flax builds over its KV cache, whether or not you passed "
        f"one): {_NO_KV_CACHE}. Dense masks of any kind are not supported yet either; for "
        "causal masking without a cache pass is_causal=True")
  if is_causal and t < s:
    raise NotImplementedError(
        f"jflash.nn.attention_fn: is_causal with fewer queries (T={t}) than keys (S={s}): "
        "jflash's causal mask is top-left aligned (query i sees keys j <= i), which is wrong "
        "for a KV cache, where the queries are the last T positions; "
        f"{_NO_KV_CACHE}")
  unsupported = {
      "bias": bias is not None,
      "mask": mask is not None,
      "dropout_rate": dropout_rate > 0.0 and not deterministic,
      "module (sow_weights=True)": module is not None,
      "qk_attn_weights_einsum": qk_attn_weights_einsum is not None,
      "attn_weights_value_einsum": attn_weights_value_einsum is not None,
      "input_positions": input_positions is not None,
  }
  reasons = {
      "bias": "a dense [.., T, S] bias is not supported yet",
      "mask": "a dense [.., T, S] mask (yours, or one Flax builds, e.g. for padding or a KV "
              "cache) is not supported yet; pass is_causal=True for causal masking",
      "dropout_rate": f"attention dropout (rate {dropout_rate}) is not available yet; "
                      "use deterministic=True or dropout_rate=0",
      "module (sow_weights=True)": "FlashAttention never forms the attention weights to sow",
      "qk_attn_weights_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "attn_weights_value_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "input_positions": "RoPE positions: use jflash.nn.FlashSelfAttention(rope_theta=...) "
                         "and pass positions=... to its call",
  }
  for name, bad in unsupported.items():
    if bad:
      raise NotImplementedError(f"jflash.nn.attention_fn: {name}: {reasons[name]}")
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  return _attention_any_batch(
      query, key, value, is_causal=is_causal, implementation=implementation, config=config,
      local_window_size=local_window_size, logits_soft_cap=logits_soft_cap,
      batched=dict(query_seq_lengths=query_seq_lengths,
                   key_value_seq_lengths=key_value_seq_lengths, q_segment_ids=q_segment_ids,
                   kv_segment_ids=kv_segment_ids, q_offset=q_offset,
                   alibi_slopes=alibi_slopes))


_NO_KV_CACHE = (
    "decoding over a KV cache is not supported by jflash yet; to decode, use Flax's "
    "nnx.MultiHeadAttention (or linen.MultiHeadDotProductAttention) with decode=True and its "
    "default attention_fn: the same parameters load into it")


_flash_attention_fn = attention_fn  # the default of FlashSelfAttention(attention_fn=...)


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


def apply_rope(x, positions, theta: float):
  """Rotary position embedding (RoFormer, Su et al. 2021), rotate-half convention.

  The same rotation as ``flax.nnx.RoPE`` (frequencies theta^(-2i/H)), but with positions
  that may carry batch dims.

  Args:
    x: [batch..., T, heads, H] with H even.
    positions: [T] or [batch..., T] positions, or None for 0..T-1.
    theta: the base frequency (10000 in RoFormer).

  Returns:
    x rotated, in x's dtype (the angles and the rotation are computed in float32).
  """
  t, h = x.shape[-3], x.shape[-1]
  positions = jnp.arange(t) if positions is None else positions
  freqs = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # [H/2]
  angles = jnp.asarray(positions, jnp.float32)[..., :, None, None] * freqs  # [.., T, 1, H/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class FlashSelfAttention(nnx.MultiHeadAttention):
  """Multi-head attention on FlashAttention kernels, for Flax NNX.

  A subclass of ``flax.nnx.MultiHeadAttention`` that takes every argument of its
  constructor and its call, with the same names, defaults and positional order, and has
  the same parameters (``query``, ``key``, ``value``: LinearGeneral to [.., heads, H];
  ``out``: LinearGeneral back to `out_features`; ``query_ln`` and ``key_ln`` with
  `normalize_qk`) and state, so state saved from ``nnx.MultiHeadAttention`` loads with
  ``nnx.update(layer, state)`` and back. Attention runs in :func:`jflash.attention`.
  Wherever it does not raise, it computes what ``nnx.MultiHeadAttention`` computes with
  the same parameters, self-attention or cross-attention alike (`in_kv_features`,
  ``layer(inputs_q, inputs_k, inputs_v)``), plus optional rotary position embedding
  (RoPE, Su et al. 2021) on q and k before the kernel.

  What ``jflash`` cannot do yet raises ``NotImplementedError`` naming the argument:

  * decoding over a KV cache: ``decode=True`` here, in the call or through
    ``nnx.view``, and :meth:`init_cache`. The parent class would keep a cache this
    layer ignores. To decode, load the parameters into ``nnx.MultiHeadAttention(...,
    decode=True)`` with its default `attention_fn` (``nnx.update(mha, nnx.state(layer,
    nnx.Param))``; a layer with `rope_theta` also needs RoPE at the cache positions).
  * attention dropout: `dropout_rate` > 0 in a call that is not deterministic
    (a deterministic call, or `dropout_rate` 0, works).
  * a dense `mask` in the call (pass ``is_causal=True`` for causal masking) and
    ``sow_weights=True`` (a FlashAttention kernel never forms the weights).

  Args:
    num_heads: N, query heads.
    in_features: features of `inputs_q`.
    qkv_features: N * H (default `in_features`).
    out_features: output features (default `in_features`).
    num_kv_heads: K, key/value heads for grouped-query attention (default N).
    in_kv_features: features of `inputs_k` and `inputs_v` (default `in_features`).
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype (default float32).
    broadcast_dropout, dropout_rate, deterministic: as in ``nnx.MultiHeadAttention``;
      attention dropout itself is not available yet (see above), so with
      `dropout_rate` > 0 every call must be deterministic (here, in the call, or through
      ``nnx.view(layer, deterministic=True)``).
    precision: precision of the projections.
    kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in
      ``nnx.MultiHeadAttention``.
    attention_fn: replaces the attention itself (default, None: :func:`attention_fn`
      with `implementation` and `config`), called as ``nnx.MultiHeadAttention`` calls
      it: ``attention_fn(q, k, v, is_causal=..., **kwargs)`` with q [batch..., T, N, H]
      and k, v [batch..., S, K, H] (after RoPE), where `kwargs` are those of Flax's
      (``mask``, ``dtype``, ``precision``, ...) that its signature takes, and
      ``input_positions`` when the call has them; for comparing against other
      attentions with everything else identical.
    decode: must be None or False (see above).
    normalize_qk: LayerNorm on q and k (ViT-22B).
    qkv_promote_dtype, out_promote_dtype, ln_promote_dtype, qkv_dot_general,
      out_dot_general, qkv_dot_general_cls, out_dot_general_cls: as in
      ``nnx.MultiHeadAttention`` (they act on the projections and the LayerNorms).
    rngs: ``nnx.Rngs`` for parameter initialisation.
    keep_rngs, kernel_metadata, out_kernel_metadata, bias_metadata, out_bias_metadata,
      query_ln_scale_metadata, key_ln_scale_metadata: as in ``nnx.MultiHeadAttention``.
    rope_theta: if not None, apply rotary position embedding with this base to q and k
      before the attention (H must be even); self-attention only: a call with
      cross-attention raises ``NotImplementedError``.
    local_window_size, logits_soft_cap: passed to the default `attention_fn` (see
      :func:`jflash.attention`): a sliding window ``(left, right)`` (or an int for both
      sides), and Gemma-2-style soft-capping of the logits.
    implementation, config: forwarded to :func:`jflash.attention`.

  Raises:
    NotImplementedError: ``decode=True``.
    ValueError: `qkv_features` not divisible by `num_heads`, `num_heads` not divisible
      by `num_kv_heads`, or `rope_theta` with an odd head dim or not positive.

  Example::

    >>> layer = jflash.nn.FlashSelfAttention(num_heads=8, in_features=256, num_kv_heads=2,
    ...                                      rope_theta=10000.0, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 128, 256)), is_causal=True).shape
    (4, 128, 256)
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None,
               in_kv_features: int | None = None, *, dtype=None, param_dtype=jnp.float32,
               broadcast_dropout: bool = True, dropout_rate: float = 0.0,
               deterministic: bool | None = None, precision=None,
               kernel_init=default_kernel_init, out_kernel_init=None,
               bias_init=nnx.initializers.zeros_init(), out_bias_init=None, use_bias: bool = True,
               attention_fn=None, decode: bool | None = None, normalize_qk: bool = False,
               qkv_promote_dtype=nnx_dtypes.promote_dtype,
               out_promote_dtype=nnx_dtypes.promote_dtype,
               ln_promote_dtype=nnx_dtypes.promote_dtype, qkv_dot_general=None,
               out_dot_general=None, qkv_dot_general_cls=None, out_dot_general_cls=None,
               rngs: nnx.Rngs, keep_rngs: bool = True,
               kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
               out_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
               bias_metadata: Mapping[str, Any] = MappingProxyType({}),
               out_bias_metadata: Mapping[str, Any] = MappingProxyType({}),
               query_ln_scale_metadata: Mapping[str, Any] = MappingProxyType({}),
               key_ln_scale_metadata: Mapping[str, Any] = MappingProxyType({}),
               rope_theta: float | None = None, local_window_size=None,
               logits_soft_cap: float | None = None, implementation: str | None = None,
               config: jflash.AttentionConfig | None = None):
    if decode:
      raise NotImplementedError(f"FlashSelfAttention(decode=True): {_NO_KV_CACHE}")
    super().__init__(
        num_heads, in_features, qkv_features, out_features, num_kv_heads, in_kv_features,
        dtype=dtype, param_dtype=param_dtype, broadcast_dropout=broadcast_dropout,
        dropout_rate=dropout_rate, deterministic=deterministic, precision=precision,
        kernel_init=kernel_init, out_kernel_init=out_kernel_init, bias_init=bias_init,
        out_bias_init=out_bias_init, use_bias=use_bias,
        attention_fn=attention_fn or functools.partial(
            _flash_attention_fn, implementation=implementation, config=config,
            local_window_size=local_window_size, logits_soft_cap=logits_soft_cap),
        decode=False, normalize_qk=normalize_qk, qkv_promote_dtype=qkv_promote_dtype,
        out_promote_dtype=out_promote_dtype, ln_promote_dtype=ln_promote_dtype,
        qkv_dot_general=qkv_dot_general, out_dot_general=out_dot_general,
        qkv_dot_general_cls=qkv_dot_general_cls, out_dot_general_cls=out_dot_general_cls,
        rngs=rngs, keep_rngs=keep_rngs, kernel_metadata=kernel_metadata,
        out_kernel_metadata=out_kernel_metadata, bias_metadata=bias_metadata,
        out_bias_metadata=out_bias_metadata, query_ln_scale_metadata=query_ln_scale_metadata,
        key_ln_scale_metadata=key_ln_scale_metadata)
    _check_rope(rope_theta, self.head_dim)
    self.rope_theta = rope_theta

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None, deterministic=None,
               rngs=None, sow_weights: bool = False, decode: bool | None = None,
               is_causal: bool = False, out_sharding=None, qkv_sharding=None,
               input_positions=None, positions=None, q_segment_ids=None,
               kv_segment_ids=None):
    """Multi-head attention of `inputs_q` over `inputs_k`/`inputs_v` (self-attention by default).

    Args:
      inputs_q: [batch..., T, in_features].
      inputs_k: [batch..., S, in_kv_features] (default `inputs_q`: self-attention).
      inputs_v: [batch..., S, in_kv_features] (default `inputs_k`).
      mask: must be None: a dense mask is not supported yet; for causal masking pass
        `is_causal`.
      deterministic: as in ``nnx.MultiHeadAttention`` (overrides the constructor's and
        ``nnx.view``'s); with `dropout_rate` > 0 it must resolve to True.
      rngs: as in ``nnx.MultiHeadAttention``; used only for dropout, which is not
        available yet.
      sow_weights: must be False (FlashAttention never forms the attention weights).
      decode: must be None or False (decoding over a KV cache is not available yet).
      is_causal: top-left aligned causal mask (query i sees keys j <= i), as in
        ``nnx.MultiHeadAttention``; with the default `attention_fn`, T >= S.
      out_sharding, qkv_sharding: as in ``nnx.MultiHeadAttention``.
      input_positions: forwarded to `attention_fn` as ``nnx.MultiHeadAttention`` does;
        the default `attention_fn` refuses them: use `rope_theta` and `positions`.
      positions: [T] or [batch..., T] RoPE positions of the queries and keys (default
        0..T-1); only with `rope_theta`.
      q_segment_ids, kv_segment_ids: integer [batch..., T] and [batch..., S] segment ids
        for packed sequences (a query attends only to keys with its id; the keys default
        to the queries' ids). With packing, give `positions` that restart per document
        if RoPE should.

    Returns:
      [batch..., T, out_features].

    Raises:
      NotImplementedError: `decode` (here or set on the layer), `mask`, `sow_weights`,
        a non-deterministic call with `dropout_rate` > 0, `rope_theta` with
        cross-attention (`inputs_k` given and not the very array `inputs_q`: RoPE needs
        the queries and keys on one sequence), and from the default `attention_fn`:
        `input_positions`, `is_causal` with T < S.
      ValueError: `inputs_q`'s last dim is not `in_features`, `inputs_v` without
        `inputs_k`, `positions` without `rope_theta`, or `dropout_rate` > 0 with
        `deterministic` given nowhere (as in ``nnx.MultiHeadAttention``).
    """
    if decode or (decode is None and self.decode):
      raise NotImplementedError(f"FlashSelfAttention: decode=True: {_NO_KV_CACHE}")
    if mask is not None:
      raise NotImplementedError(
          "FlashSelfAttention: mask: a dense attention mask is not supported yet; for causal "
          "masking pass is_causal=True (query i sees keys j <= i) instead")
    if sow_weights:
      raise NotImplementedError(
          "FlashSelfAttention: sow_weights=True: FlashAttention never forms the attention "
          "weights to sow; use nnx.MultiHeadAttention with the same parameters to inspect them")
    if self.dropout_rate > 0.0:
      deterministic = first_from(
          deterministic, self.deterministic,
          error_msg="No `deterministic` argument was provided to FlashSelfAttention as either "
                    "a __call__ argument, class attribute, or nnx.view")
      if not deterministic:
        raise NotImplementedError(
            f"FlashSelfAttention: dropout_rate={self.dropout_rate}: attention dropout is not "
            "available in jflash yet; call with deterministic=True (or construct with "
            "deterministic=True, or use nnx.view(model, deterministic=True)), or use "
            "dropout_rate=0")
    del rngs  # Only for dropout.
    self_attention = inputs_k is None or inputs_k is inputs_q
    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError(
            "`inputs_k` cannot be None if `inputs_v` is not None. To have both `inputs_k` "
            "and `inputs_v` be the same value, pass in the value to `inputs_k` and leave "
            "`inputs_v` as None.")
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    if inputs_q.shape[-1] != self.in_features:
      raise ValueError(f"inputs_q.shape={inputs_q.shape}: last dim must be "
                       f"in_features={self.in_features}")
    if positions is not None and self.rope_theta is None:
      raise ValueError("positions are only used with rope_theta; this layer has none")
    if self.rope_theta is not None and not self_attention:
      raise NotImplementedError(
          f"FlashSelfAttention: rope_theta={self.rope_theta} with cross-attention (inputs_k "
          "other than inputs_q): RoPE needs queries and keys on one sequence; use a layer "
          "with rope_theta=None for cross-attention")
    q = self.query(inputs_q, out_sharding=qkv_sharding)
    k = self.key(inputs_k, out_sharding=qkv_sharding)
    v = self.value(inputs_v, out_sharding=qkv_sharding)
    if self.normalize_qk:
      q, k = self.query_ln(q), self.key_ln(k)
    if self.rope_theta is not None:
      q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    flax_kwargs = dict(mask=None, dropout_rng=None, dropout_rate=self.dropout_rate,
                       broadcast_dropout=self.broadcast_dropout, deterministic=True,
                       dtype=self.dtype, precision=self.precision, module=None)
    always = ["input_positions"]
    if input_positions is not None:
      flax_kwargs["input_positions"] = input_positions
    for name, ids in (("q_segment_ids", q_segment_ids), ("kv_segment_ids", kv_segment_ids)):
      if ids is not None:  # passed even to an attention_fn that does not take them
        flax_kwargs[name] = ids
        always.append(name)
    y = _call_attention_fn(self.attention_fn, q, k, v, is_causal=is_causal,
                           always=tuple(always), **flax_kwargs)
    return self.out(y, out_sharding=out_sharding)

  def init_cache(self, input_shape, dtype=jnp.float32):
    """Not available yet: raises ``NotImplementedError``.

    ``nnx.MultiHeadAttention.init_cache`` makes a KV cache for ``decode=True``, which
    this layer would ignore. Decoding over a KV cache is not supported by jflash yet.
    """
    del input_shape, dtype
    raise NotImplementedError(f"FlashSelfAttention.init_cache: {_NO_KV_CACHE}")

  def set_view(self, deterministic: bool | None = None, decode: bool | None = None,
               batch_size=None, max_length=None):
    """Used by ``nnx.view``: as in ``nnx.MultiHeadAttention``, but ``decode=True`` raises.

    Raises:
      NotImplementedError: ``decode=True`` (decoding over a KV cache is not available yet).
    """
    if decode:
      raise NotImplementedError(f"FlashSelfAttention: nnx.view(decode=True): {_NO_KV_CACHE}")
    super().set_view(deterministic=deterministic, decode=decode, batch_size=batch_size,
                     max_length=max_length)


def _call_attention_fn(fn, q, k, v, *, is_causal, always=(), **kwargs):
  """fn(q, k, v, is_causal=..., **kwargs), dropping the kwargs fn's signature does not take.

  Keys in `always` are passed regardless (as ``nnx.MultiHeadAttention`` passes them).
  """
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):  # No signature: pass everything, as Flax does.
    params = None
  if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {name: x for name, x in kwargs.items() if name in names or name in always}
  return fn(q, k, v, is_causal=is_causal, **kwargs)


def _check_rope(rope_theta, head_dim: int):
  if rope_theta is None:
    return
  if not (isinstance(rope_theta, (int, float)) and math.isfinite(rope_theta) and rope_theta > 0):
    raise ValueError(f"rope_theta={rope_theta!r} must be a positive finite number or None")
  if head_dim % 2:
    raise ValueError(f"rope_theta needs an even head dim; got head_dim={head_dim}")


__all__ = ["FlashSelfAttention", "attention_fn", "apply_rope"]
