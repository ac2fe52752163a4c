"""Flax layers on top of :func:`jflash.attention` (NNX here; linen in `jflash.nn.linen`).

* :class:`FlashSelfAttention` — a Flax NNX attention layer with the constructor, call and
  parameters of ``flax.nnx.MultiHeadAttention`` (it is a subclass: sub-modules
  ``query/key/value/out``, ``query_ln/key_ln`` with ``normalize_qk``), so an
  ``nnx.MultiHeadAttention`` checkpoint loads into it unchanged. Optional rotary
  position embedding (RoPE, Su et al. 2021) on q and k before the kernel.
* :func:`attention_fn` (defined in `jflash.nn.functional`) — a drop-in ``attention_fn``
  for ``nnx.MultiHeadAttention`` and ``linen.MultiHeadDotProductAttention``.

Both take Flax's `mask` and `bias` and attention dropout (with ``broadcast_dropout=False``).
Neither decodes over a KV cache yet (``decode=True``, ``init_cache``), nor applies Flax's
``broadcast_dropout=True``: those raise ``NotImplementedError`` rather than compute
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

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes as nnx_dtypes
from flax.nnx.nn.linear import default_kernel_init

import jflash
from jflash.nn.functional import NO_KV_CACHE as _NO_KV_CACHE
from jflash.nn.functional import attention_fn

_flash_attention_fn = attention_fn  # the default of FlashSelfAttention(attention_fn=...)


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
  (RoPE, Su et al. 2021) on q and k before the kernel. In self-attention the three
  projections run as one matrix multiply over their kernels concatenated along the heads
  (the same products; not when they differ in configuration, have a custom dot_general,
  carry a sharding, or `qkv_sharding` is given).

  Attention dropout works as in the parent (`dropout_rate`, `deterministic` here, in the
  call or through ``nnx.view``; the dropout key from the call's `rngs` or the layer's
  own ``self.rngs``), fused in the kernel, with ``broadcast_dropout=False``: each
  (batch, head, query, key) probability is dropped independently. A call's `mask`
  (Flax's boolean [batch..., N or 1, T, S], or a ``jflash.masks`` object) and `bias`
  reach the kernel through :func:`attention_fn`, which documents them.

  What ``jflash`` cannot do yet raises ``NotImplementedError`` naming the argument:

  * decoding over a KV cache: ``decode=True`` here, in the call or through
    ``nnx.view``, and :meth:`init_cache`. The parent class would keep a cache this
    layer ignores. To decode, load the parameters into ``nnx.MultiHeadAttention(...,
    decode=True)`` with its default `attention_fn` (``nnx.update(mha, nnx.state(layer,
    nnx.Param))``; a layer with `rope_theta` also needs RoPE at the cache positions).
  * dropout with ``broadcast_dropout=True`` (the parent's default: one T x S dropout
    mask shared by all batch elements and heads), in a call that applies dropout:
    construct with ``broadcast_dropout=False``.
  * ``sow_weights=True`` (a FlashAttention kernel never forms the weights).

  Args:
    num_heads: N, query heads.
    in_features: features of `inputs_q`.
    qkv_features: N * H (default `in_features`).
    out_features: output features (default `in_features`).
    num_kv_heads: K, key/value heads for grouped-query attention (default N).
    in_kv_features: features of `inputs_k` and `inputs_v` (default `in_features`).
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype (default float32).
    broadcast_dropout: must be False for a call that applies dropout (see above).
    dropout_rate: probability of dropping an attention probability, in [0, 1).
    deterministic: as in ``nnx.MultiHeadAttention``: True turns dropout off (the call's
      `deterministic` and ``nnx.view`` take precedence).
    precision: precision of the projections.
    kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in
      ``nnx.MultiHeadAttention``.
    attention_fn: replaces the attention itself (default, None: :func:`attention_fn`
      with `implementation` and `config`), called as ``nnx.MultiHeadAttention`` calls
      it: ``attention_fn(q, k, v, is_causal=..., **kwargs)`` with q [batch..., T, N, H]
      and k, v [batch..., S, K, H] (after RoPE), where `kwargs` are those of Flax's
      (``mask``, ``dtype``, ``precision``, ...) that its signature takes; a call's
      `mask`, `bias`, segment ids, ``input_positions`` and, when dropout is applied,
      the dropout arguments are passed whenever given, taken or not (never dropped);
      for comparing against other attentions with everything else identical.
    decode: must be None or False (see above).
    normalize_qk: LayerNorm on q and k (ViT-22B).
    qkv_promote_dtype, out_promote_dtype, ln_promote_dtype, qkv_dot_general,
      out_dot_general, qkv_dot_general_cls, out_dot_general_cls: as in
      ``nnx.MultiHeadAttention`` (they act on the projections and the LayerNorms).
    rngs: ``nnx.Rngs`` for parameter initialisation; with `dropout_rate` > 0 and
      `keep_rngs`, the layer keeps a fork of its ``dropout`` stream for dropout keys.
    keep_rngs, kernel_metadata, out_kernel_metadata, bias_metadata, out_bias_metadata,
      query_ln_scale_metadata, key_ln_scale_metadata: as in ``nnx.MultiHeadAttention``.
    rope_theta: if not None, apply rotary position embedding with this base to q and k
      before the attention (H must be even); self-attention only: a call with
      cross-attention raises ``NotImplementedError``.
    local_window_size, logits_soft_cap: passed to the default `attention_fn` (see
      :func:`jflash.attention`): a sliding window ``(left, right)`` (or an int for both
      sides), and Gemma-2-style soft-capping of the logits.
    implementation, config: forwarded to :func:`jflash.attention`.
    deterministic_backward: forwarded to :func:`jflash.attention` as `deterministic`
      (`deterministic` here is about dropout, as in ``nnx.MultiHeadAttention``): False
      lets the backward sum dQ in any order where that is faster.

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
               config: jflash.AttentionConfig | None = None,
               deterministic_backward: bool = True):
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
            deterministic_backward=deterministic_backward,
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
               kv_segment_ids=None, bias=None):
    """Multi-head attention of `inputs_q` over `inputs_k`/`inputs_v` (self-attention by default).

    Args:
      inputs_q: [batch..., T, in_features].
      inputs_k: [batch..., S, in_kv_features] (default `inputs_q`: self-attention).
      inputs_v: [batch..., S, in_kv_features] (default `inputs_k`).
      mask: None, boolean [batch..., N or 1, T, S] (True: attend; e.g. from
        ``nnx.make_attention_mask``), or a ``jflash.masks`` object; see
        :func:`attention_fn` (a concrete causal mask runs as `is_causal`).
      deterministic: as in ``nnx.MultiHeadAttention`` (overrides the constructor's and
        ``nnx.view``'s): with `dropout_rate` > 0, False applies dropout.
      rngs: as in ``nnx.MultiHeadAttention``: ``nnx.Rngs`` (its ``dropout`` stream) or
        an ``nnx.RngStream`` for the dropout key (default: the layer's own, kept at
        construction); used only when dropout is applied.
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
      bias: None, or float [batch..., N or 1, T, S] added to the scaled logits
        (differentiable; see :func:`attention_fn`).

    Returns:
      [batch..., T, out_features].

    Raises:
      NotImplementedError: `decode` (here or set on the layer), `sow_weights`,
        `rope_theta` with cross-attention (`inputs_k` given and not the very array
        `inputs_q`: RoPE needs the queries and keys on one sequence), and from the
        default `attention_fn`: dropout with ``broadcast_dropout=True``,
        `input_positions`, `is_causal` with T < S, a `mask` with T = 1 < S (a KV cache).
      ValueError: `inputs_q`'s last dim is not `in_features`, `inputs_v` without
        `inputs_k`, `positions` without `rope_theta`, `dropout_rate` > 0 with
        `deterministic` given nowhere, or dropout with no `rngs` here and none kept
        (``keep_rngs=False``), as in ``nnx.MultiHeadAttention``; a `mask` or `bias` of
        the wrong shape.
    """
    if decode or (decode is None and self.decode):
      raise NotImplementedError(f"FlashSelfAttention: decode=True: {_NO_KV_CACHE}")
    if sow_weights:
      raise NotImplementedError(
          "FlashSelfAttention: sow_weights=True: FlashAttention never forms the attention "
          "weights to sow; use nnx.MultiHeadAttention with the same parameters to inspect them")
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
    if self_attention and inputs_v is inputs_q and self._fusable_qkv(qkv_sharding):
      q, k, v = self._project_qkv(inputs_q)
    else:
      q = self.query(inputs_q, out_sharding=qkv_sharding)
      k = self.key(inputs_k, out_sharding=qkv_sharding)
      v = self.value(inputs_v, out_sharding=qkv_sharding)
    if self.normalize_qk:
      q, k = self.query_ln(q), self.key_ln(k)
    if self.rope_theta is not None:
      q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    deterministic, dropout_rng = self._dropout_rng(deterministic, rngs)  # as the parent
    flax_kwargs = dict(mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                       broadcast_dropout=self.broadcast_dropout, deterministic=deterministic,
                       dtype=self.dtype, precision=self.precision, module=None)
    # Passed even to an attention_fn whose signature lacks them (never dropped silently).
    always = []
    if mask is not None:
      always.append("mask")
    if dropout_rng is not None:
      always += ["dropout_rng", "dropout_rate", "broadcast_dropout", "deterministic"]
    for name, x in (("input_positions", input_positions), ("q_segment_ids", q_segment_ids),
                    ("kv_segment_ids", kv_segment_ids), ("bias", bias)):
      if x is not None:
        flax_kwargs[name] = x
        always.append(name)
    y = _call_attention_fn(self.attention_fn, q, k, v, is_causal=is_causal,
                           always=tuple(always), **flax_kwargs)
    return self.out(y, out_sharding=out_sharding)

  def _fusable_qkv(self, qkv_sharding) -> bool:
    """Whether q, k and v of one input can come from one matrix multiply: three plain
    LinearGenerals alike in everything but their heads (input width, head dim, dtypes,
    precision, promotion, bias or not; no custom dot_general), none of their parameters
    sharded (a split of head-sharded kernels would move data between devices), and no
    output sharding asked for."""
    query = self.query
    projections = (query, self.key, self.value)

    def alike(p):
      return (type(p) is nnx.LinearGeneral and p.dot_general is None
              and p.dot_general_cls is None and p.preferred_element_type is None
              and p.dtype == query.dtype and p.precision == query.precision
              and p.promote_dtype is query.promote_dtype
              and p.kernel.dtype == query.kernel.dtype
              and (p.kernel.shape[0], p.kernel.shape[-1]) == (query.kernel.shape[0],
                                                              query.kernel.shape[-1])
              and (p.bias is None) == (query.bias is None))

    params = [v for p in projections for v in (p.kernel, p.bias) if v is not None]
    return (qkv_sharding is None and all(alike(p) for p in projections)
            and all(_unsharded(v) for v in params))

  def _project_qkv(self, x):
    """q, k, v = the query, key and value projections of `x`, as one matrix multiply over
    their kernels concatenated along the heads axis (the same products, one GEMM in the
    forward and one for the input gradient: 2.5% of a GPT-2-small training step on an
    H200, BUILD_NOTES issue 11)."""
    projections = (self.query, self.key, self.value)
    kernel = jnp.concatenate([p.kernel[...] for p in projections], axis=-2)
    bias = (jnp.concatenate([p.bias[...] for p in projections], axis=-2)
            if self.query.bias is not None else None)
    x, kernel, bias = self.query.promote_dtype((x, kernel, bias), dtype=self.query.dtype)
    out = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                              precision=self.query.precision)
    if bias is not None:
      out += bias
    n, kv = self.query.kernel.shape[-2], self.key.kernel.shape[-2]
    return jnp.split(out, [n, n + kv], axis=-2)

  def _dropout_rng(self, deterministic, rngs):
    """(deterministic, dropout key or None) of a call, as ``nnx.MultiHeadAttention`` does.

    Raises:
      ValueError: `dropout_rate` > 0 and `deterministic` given nowhere, or dropout
        applied with no `rngs` in the call and none kept by the layer.
    """
    if self.dropout_rate <= 0.0:
      return True, None
    deterministic = first_from(
        deterministic, self.deterministic,
        error_msg="No `deterministic` argument was provided to FlashSelfAttention as either "
                  "a __call__ argument, class attribute, or nnx.view")
    if deterministic:
      return True, None
    if rngs is None:
      rngs = self.rngs
    elif isinstance(rngs, nnx.Rngs):
      rngs = rngs.dropout
    if rngs is None:
      raise ValueError(
          f"FlashSelfAttention: dropout_rate={self.dropout_rate} with deterministic=False "
          "needs a dropout key: pass rngs=... to the call, as the layer was built with "
          "keep_rngs=False")
    return False, rngs()

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


def _unsharded(variable) -> bool:
  """No sharding annotated on `variable` (flax metadata) nor carried by its value."""
  metadata = variable.get_metadata()
  for key in ("out_sharding", "sharding_names", "sharding"):
    names = metadata.get(key)
    if names is not None and any(name is not None for name in names):
      return False
  spec = getattr(jax.typeof(variable[...]).sharding, "spec", None)
  return spec is None or all(axis is None for axis in spec)


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
