"""Flax linen self-attention on FlashAttention kernels.

:class:`FlashSelfAttention` has the fields and parameter names of
``flax.linen.MultiHeadDotProductAttention`` (``query``, ``key``, ``value``, ``out``
DenseGeneral; ``query_ln``/``key_ln`` with `normalize_qk`), so that module's params load
into it unchanged, plus `num_kv_heads` for grouped-query attention, `rope_theta`, and
jflash's sliding window, soft-cap and packed-sequence segment ids.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn
from flax.linen.linear import default_kernel_init

import jflash
from jflash.nn import _check_rope, apply_rope
from jflash.nn.functional import attention_fn

__all__ = ["FlashSelfAttention", "attention_fn"]


class FlashSelfAttention(nn.Module):
  """Multi-head self-attention on :func:`jflash.attention`, for Flax linen.

  Not a subclass of ``linen.MultiHeadDotProductAttention``: it has its parameters but
  only these fields and call arguments. It has no `decode` (decoding over a KV cache is
  not supported by jflash yet: no ``cache`` collection is read or written, and every call
  attends over its whole input); for that, run the same params in
  ``linen.MultiHeadDotProductAttention`` with its default `attention_fn`
  (:func:`jflash.nn.attention_fn` in that module raises ``NotImplementedError`` under
  ``decode=True``).

  Attention dropout (`dropout_rate`, `deterministic` as a field or call argument, exactly
  one of them set when `dropout_rate` > 0, as in ``linen.MultiHeadDotProductAttention``;
  the key from the call's `dropout_rng` or ``self.make_rng('dropout')``) runs fused in
  the kernel and drops each (batch, head, query, key) probability independently: there
  is no ``broadcast_dropout``.

  Attributes:
    num_heads: N, query heads.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype (default float32).
    qkv_features: N * H (default: the input's features).
    out_features: output features (default: the input's features).
    num_kv_heads: K, key/value heads for grouped-query attention (default N).
    precision: precision of the projections.
    kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in
      ``linen.MultiHeadDotProductAttention``.
    normalize_qk: LayerNorm on q and k (ViT-22B).
    rope_theta: if not None, rotary position embedding with this base on q and k.
    implementation, config: forwarded to :func:`jflash.attention`.
    deterministic_backward: forwarded to :func:`jflash.attention` as `deterministic`
      (`deterministic` below is about dropout): False lets the backward sum dQ in any
      order where that is faster.
    dropout_rate: probability of dropping an attention probability, in [0, 1).
    deterministic: True turns dropout off; None to give it in the call instead.
    local_window_size, logits_soft_cap: see :func:`jflash.attention`: a sliding window
      ``(left, right)`` (or an int for both sides), and soft-capping of the logits.

  Example::

    >>> layer = jflash.nn.linen.FlashSelfAttention(num_heads=4)
    >>> x = jnp.ones((2, 16, 64))
    >>> params = layer.init(jax.random.PRNGKey(0), x)
    >>> layer.apply(params, x, is_causal=True).shape
    (2, 16, 64)
  """

  num_heads: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  qkv_features: int | None = None
  out_features: int | None = None
  num_kv_heads: int | None = None
  precision: Any = None
  kernel_init: Callable[..., Any] = default_kernel_init
  out_kernel_init: Callable[..., Any] | None = None
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  out_bias_init: Callable[..., Any] | None = None
  use_bias: bool = True
  normalize_qk: bool = False
  rope_theta: float | None = None
  implementation: str | None = None
  config: jflash.AttentionConfig | None = None
  deterministic_backward: bool = True
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  local_window_size: Any = None
  logits_soft_cap: float | None = None

  @nn.compact
  def __call__(self, x, *, mask=None, bias=None, deterministic: bool | None = None,
               dropout_rng=None, is_causal: bool = False, positions=None,
               q_segment_ids=None, kv_segment_ids=None):
    """Self-attention over x.

    Args:
      x: [batch..., T, features].
      mask: None, boolean [batch..., N or 1, T, T] (True: attend; e.g. from
        ``linen.make_attention_mask``), or a ``jflash.masks`` object; see
        :func:`jflash.nn.attention_fn` (a concrete causal mask runs as `is_causal`).
      bias: None, or float [batch..., N or 1, T, T] added to the scaled logits
        (differentiable).
      deterministic: with `dropout_rate` > 0: False applies dropout; give it here or
        as the field, not both.
      dropout_rng: the dropout key (default ``self.make_rng('dropout')``).
      is_causal: top-left aligned causal mask (query i sees keys j <= i).
      positions: [batch..., T] RoPE positions (default 0..T-1); only with `rope_theta`.
      q_segment_ids, kv_segment_ids: integer [batch..., T] segment ids for packed
        sequences (a query attends only to keys with its id).

    Returns:
      [batch..., T, out_features or features].

    Raises:
      ValueError: `qkv_features` not divisible by `num_heads`, `num_heads` not
        divisible by `num_kv_heads`, RoPE with an odd head dim, `positions`
        without `rope_theta`, `deterministic` given in both or neither of the field and
        the call with `dropout_rate` > 0, dropout with no ``dropout`` rng, or a `mask`
        or `bias` of the wrong shape.
    """
    features = self.out_features or x.shape[-1]
    qkv_features = self.qkv_features or x.shape[-1]
    kv_heads = self.num_kv_heads or self.num_heads
    if qkv_features % self.num_heads:
      raise ValueError(f"qkv_features={qkv_features} must be divisible by "
                       f"num_heads={self.num_heads}")
    if self.num_heads % kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be divisible by num_kv_heads={kv_heads}")
    head_dim = qkv_features // self.num_heads
    _check_rope(self.rope_theta, head_dim)
    if positions is not None and self.rope_theta is None:
      raise ValueError("positions are only used with rope_theta; this layer has none")
    dense = functools.partial(
        nn.DenseGeneral, axis=-1, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=self.kernel_init, bias_init=self.bias_init, use_bias=self.use_bias,
        precision=self.precision)
    q = dense(features=(self.num_heads, head_dim), name="query")(x)
    k = dense(features=(kv_heads, head_dim), name="key")(x)
    v = dense(features=(kv_heads, head_dim), name="value")(x)
    if self.normalize_qk:
      q = nn.LayerNorm(name="query_ln", use_bias=False, dtype=self.dtype,
                       param_dtype=self.param_dtype)(q)
      k = nn.LayerNorm(name="key_ln", use_bias=False, dtype=self.dtype,
                       param_dtype=self.param_dtype)(k)
    if self.rope_theta is not None:
      q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    no_dropout = True
    if self.dropout_rate > 0.0:
      no_dropout = nn.merge_param("deterministic", self.deterministic, deterministic)
      if not no_dropout and dropout_rng is None:
        dropout_rng = self.make_rng("dropout")
    y = attention_fn(q, k, v, bias=bias, mask=mask, broadcast_dropout=False,
                     dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                     deterministic=no_dropout, is_causal=is_causal,
                     q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                     local_window_size=self.local_window_size,
                     logits_soft_cap=self.logits_soft_cap, implementation=self.implementation,
                     config=self.config, deterministic_backward=self.deterministic_backward)
    return nn.DenseGeneral(
        features=features, axis=(-2, -1), kernel_init=self.out_kernel_init or self.kernel_init,
        bias_init=self.out_bias_init or self.bias_init, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, name="out")(y)
