"""Flax layers on top of :func:`jflash.attention` (NNX here; linen in `jflash.nn.linen`).

* :class:`FlashSelfAttention` — a Flax NNX self-attention layer with the constructor and
  parameters of ``flax.nnx.MultiHeadAttention`` (it is a subclass: sub-modules
  ``query/key/value/out``, ``query_ln/key_ln`` with ``normalize_qk``), so an
  ``nnx.MultiHeadAttention`` checkpoint loads into it unchanged. Optional rotary
  position embedding (RoPE, Su et al. 2021) on q and k before the kernel.
* :func:`attention_fn` — a drop-in ``attention_fn`` for ``nnx.MultiHeadAttention`` and
  ``linen.MultiHeadDotProductAttention``.

This module only calls :func:`jflash.attention`; it never imports a kernel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from flax.nnx.nn.linear import default_kernel_init

import jflash


def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout: bool = True,
                 dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = False,
                 dtype=None, precision=None, module=None,
                 promote_dtype=nnx_dtypes.promote_dtype, is_causal: bool = False,
                 force_fp32_for_softmax: bool = False, qk_attn_weights_einsum=None,
                 attn_weights_value_einsum=None, input_positions=None, *,
                 implementation: str | None = None, config: jflash.AttentionConfig | None = None):
  """FlashAttention with the signature of Flax's ``dot_product_attention``.

  Pass it as ``attention_fn=jflash.nn.attention_fn`` to ``nnx.MultiHeadAttention`` or
  ``linen.MultiHeadDotProductAttention`` (use ``functools.partial`` to set
  `implementation` or `config`). It takes exactly the keyword arguments Flax passes.

  Args:
    query: [batch..., T, N, H].
    key, value: [batch..., S, K, H], N % K == 0.
    bias, mask: must be None: a dense [.., T, S] bias or mask cannot be tiled. Use
      `is_causal` for causal masking.
    broadcast_dropout, dropout_rng: unused when there is no dropout.
    dropout_rate, deterministic: dropout is not available yet: `dropout_rate` must be
      0 or `deterministic` True.
    dtype: computation dtype; q, k, v are promoted to it with `promote_dtype`.
    precision: accepted for compatibility: products are always exact with fp32
      accumulation, which meets any `jax.lax.Precision`.
    module: must be None (``sow_weights=True`` asks for the T x S weights, which a
      FlashAttention kernel never forms).
    promote_dtype: Flax's dtype promotion function.
    is_causal: top-left aligned causal mask.
    force_fp32_for_softmax: accepted: the softmax is always computed in fp32.
    qk_attn_weights_einsum, attn_weights_value_einsum: must be None (quantised einsums).
    input_positions: must be None; use :class:`FlashSelfAttention` with `rope_theta`.
    implementation, config: forwarded to :func:`jflash.attention`.

  Returns:
    [batch..., T, N, H] in the promoted dtype.

  Raises:
    NotImplementedError: for any argument above that cannot be honoured, naming it.
    ValueError: from :func:`jflash.attention` for bad shapes or dtypes.

  Example::

    >>> from flax import nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False,
    ...                                attention_fn=jflash.nn.attention_fn, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 16, 64)), is_causal=True).shape
    (2, 16, 64)
  """
  del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax
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
      "bias": "a dense [.., T, S] bias cannot be tiled",
      "mask": "a dense [.., T, S] mask cannot be tiled; pass is_causal=True for causal masking",
      "dropout_rate": f"attention dropout (rate {dropout_rate}) is not available yet; "
                      "use deterministic=True or dropout_rate=0",
      "module (sow_weights=True)": "FlashAttention never forms the attention weights to sow",
      "qk_attn_weights_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "attn_weights_value_einsum": "custom (quantised) einsums cannot run inside the kernel",
      "input_positions": "RoPE positions: use jflash.nn.FlashSelfAttention(rope_theta=...)",
  }
  for name, bad in unsupported.items():
    if bad:
      raise NotImplementedError(f"jflash.nn.attention_fn: {name}: {reasons[name]}")
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  return _attention_any_batch(query, key, value, is_causal=is_causal,
                              implementation=implementation, config=config)


_flash_attention_fn = attention_fn  # the default of FlashSelfAttention(attention_fn=...)


def _attention_any_batch(q, k, v, **kwargs):
  """jflash.attention over any number of leading batch dims (Flax allows several)."""
  if q.ndim <= 4:
    return jflash.attention(q, k, v, **kwargs)
  batch = q.shape[:-3]
  flat = lambda x: x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])
  out = jflash.attention(flat(q), flat(k), flat(v), **kwargs)
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
  """Multi-head self-attention on FlashAttention kernels, for Flax NNX.

  A subclass of ``flax.nnx.MultiHeadAttention`` with the same constructor arguments
  and the same parameters (``query``, ``key``, ``value``: LinearGeneral to
  [.., heads, H]; ``out``: LinearGeneral back to `out_features`; ``query_ln`` and
  ``key_ln`` with `normalize_qk`), so state saved from ``nnx.MultiHeadAttention`` loads
  with ``nnx.update(layer, state)``. Attention runs in :func:`jflash.attention`.

  Args:
    num_heads: N, query heads.
    in_features: features of the input x.
    qkv_features: N * H (default `in_features`).
    out_features: output features (default `in_features`).
    num_kv_heads: K, key/value heads for grouped-query attention (default N).
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype (default float32).
    precision: precision of the projections.
    kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in
      ``nnx.MultiHeadAttention``.
    normalize_qk: LayerNorm on q and k (ViT-22B).
    rope_theta: if not None, apply rotary position embedding with this base to q and k
      before the kernel (H must be even).
    implementation, config: forwarded to :func:`jflash.attention`.
    attention_fn: replaces the attention itself (default: :func:`attention_fn` with
      `implementation` and `config`), called as ``attention_fn(q, k, v, is_causal=...)``
      with q [batch..., T, N, H] and k, v [batch..., T, K, H]; for comparing against other
      attentions with everything else identical.
    rngs: ``nnx.Rngs`` for parameter initialisation.

  Raises:
    ValueError: `qkv_features` not divisible by `num_heads`, `num_heads` not divisible
      by `num_kv_heads`, or `rope_theta` with an odd head dim or not positive.

  Example::

    >>> layer = jflash.nn.FlashSelfAttention(num_heads=8, in_features=256, num_kv_heads=2,
    ...                                      rope_theta=10000.0, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 128, 256)), is_causal=True).shape
    (4, 128, 256)
  """

  def __init__(self, num_heads: int, in_features: int, qkv_features: int | None = None,
               out_features: int | None = None, num_kv_heads: int | None = None, *,
               dtype=None, param_dtype=jnp.float32, precision=None,
               kernel_init=default_kernel_init, out_kernel_init=None,
               bias_init=nnx.initializers.zeros_init(), out_bias_init=None, use_bias: bool = True,
               normalize_qk: bool = False, rope_theta: float | None = None,
               implementation: str | None = None, config: jflash.AttentionConfig | None = None,
               attention_fn=None, rngs: nnx.Rngs):
    super().__init__(
        num_heads, in_features, qkv_features, out_features, num_kv_heads, dtype=dtype,
        param_dtype=param_dtype, precision=precision, kernel_init=kernel_init,
        out_kernel_init=out_kernel_init, bias_init=bias_init, out_bias_init=out_bias_init,
        use_bias=use_bias, normalize_qk=normalize_qk, decode=False,
        attention_fn=attention_fn or functools.partial(
            _flash_attention_fn, implementation=implementation, config=config),
        rngs=rngs)
    _check_rope(rope_theta, self.head_dim)
    self.rope_theta = rope_theta

  def __call__(self, x, *, is_causal: bool = False, positions=None, out_sharding=None,
               qkv_sharding=None):
    """Self-attention over x.

    Args:
      x: [batch..., T, in_features].
      is_causal: top-left aligned causal mask (query i sees keys j <= i).
      positions: [batch..., T] positions for RoPE (default 0..T-1); only with
        `rope_theta`.
      out_sharding, qkv_sharding: as in ``nnx.MultiHeadAttention``.

    Returns:
      [batch..., T, out_features].

    Raises:
      ValueError: x's last dim is not `in_features`, or `positions` without `rope_theta`.
    """
    if x.shape[-1] != self.in_features:
      raise ValueError(f"x.shape={x.shape}: last dim must be in_features={self.in_features}")
    if positions is not None and self.rope_theta is None:
      raise ValueError("positions are only used with rope_theta; this layer has none")
    q = self.query(x, out_sharding=qkv_sharding)
    k = self.key(x, out_sharding=qkv_sharding)
    v = self.value(x, out_sharding=qkv_sharding)
    if self.normalize_qk:
      q, k = self.query_ln(q), self.key_ln(k)
    if self.rope_theta is not None:
      q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
    y = self.attention_fn(q, k, v, is_causal=is_causal)
    return self.out(y, out_sharding=out_sharding)


def _check_rope(rope_theta, head_dim: int):
  if rope_theta is None:
    return
  if not (isinstance(rope_theta, (int, float)) and math.isfinite(rope_theta) and rope_theta > 0):
    raise ValueError(f"rope_theta={rope_theta!r} must be a positive finite number or None")
  if head_dim % 2:
    raise ValueError(f"rope_theta needs an even head dim; got head_dim={head_dim}")


__all__ = ["FlashSelfAttention", "attention_fn", "apply_rope"]
