"""Validation and normalisation of `jflash.attention`'s arguments.

Every function raises ValueError naming the offending values; none asserts.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jflash import dropout, sparsity

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
MAX_HEAD_DIM = 256


def check_shapes(q, k, v) -> bool:
  """Validates ranks and sizes; returns True for unbatched inputs."""
  shapes = f"q.shape={q.shape}, k.shape={k.shape}, v.shape={v.shape}"
  if not (q.ndim == k.ndim == v.ndim and q.ndim in (3, 4)):
    raise ValueError(
        f"q, k, v must all be rank 4 ([B, T, N, H], [B, S, K, H], [B, S, K, H]) or all "
        f"rank 3 (unbatched); got {shapes}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape [B, S, K, H]; got {shapes}")
  if q.shape[:-3] != k.shape[:-3]:
    raise ValueError(f"q, k, v must have the same batch size B; got {shapes}")
  t, n, h = q.shape[-3:]
  s, kv_heads, h_k = k.shape[-3:]
  if h != h_k:
    raise ValueError(f"q, k, v must have the same head dim H; got {shapes}")
  if not 1 <= h <= MAX_HEAD_DIM:
    raise ValueError(f"head dim H={h} must be in [1, {MAX_HEAD_DIM}]; got {shapes}")
  if t < 1 or s < 1:
    raise ValueError(f"sequence lengths T={t} and S={s} must be >= 1; got {shapes}")
  if kv_heads < 1 or n % kv_heads:
    raise ValueError(
        f"query heads N={n} must be a multiple of key/value heads K={kv_heads}; got {shapes}")
  if q.ndim == 4 and q.shape[0] < 1:
    raise ValueError(f"batch size B must be >= 1; got {shapes}")
  return q.ndim == 3


def check_dtypes(q, k, v):
  dtypes = (q.dtype, k.dtype, v.dtype)
  if any(d not in _DTYPES for d in dtypes) or len(set(dtypes)) != 1:
    raise ValueError(
        "q, k, v must share one dtype among bfloat16, float16, float32; got "
        f"q.dtype={q.dtype}, k.dtype={k.dtype}, v.dtype={v.dtype}")
  return jnp.dtype(q.dtype)


def check_scale(scale, head_dim: int) -> float:
  """The scale as a Python float: a positive finite scalar known at trace time."""
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if isinstance(scale, jax.core.Tracer):
    raise ValueError(
        f"scale must be known at trace time (jflash compiles it into the kernels), but it "
        f"is a traced value {scale!r}; pass a Python float, or close over a concrete value "
        f"instead of passing it through jit/vmap/grad")
  if isinstance(scale, (bool, np.bool_)) or not isinstance(
      scale, (numbers.Real, np.ndarray, np.generic, jax.Array)):
    raise ValueError(f"scale must be a positive finite number, got {scale!r}")
  if isinstance(scale, (np.ndarray, np.generic, jax.Array)):
    if np.size(scale) != 1:
      raise ValueError(f"scale must be a scalar, got an array of shape {np.shape(scale)}")
    if not jnp.issubdtype(scale.dtype, jnp.floating) and not jnp.issubdtype(
        scale.dtype, jnp.integer):
      raise ValueError(f"scale must be a real number, got dtype {scale.dtype}")
    scale = np.asarray(scale).reshape(())
  value = float(scale)
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"scale must be a positive finite number, got {value!r}")
  return value


def batched_operand(name, x, trailing, kind, *, unbatched, batch, broadcast=False):
  """A runtime operand as a [B, *trailing] array (int32, or float32 for floats), or None.

  Unbatched calls take it without the batch axis; with `broadcast`, batched calls may
  also give it without the batch axis (the same for every batch element). Raises
  ValueError naming `name` for a wrong shape or dtype.
  """
  if x is None:
    return None
  x = x if isinstance(x, jax.Array) else jnp.asarray(x)
  want = [tuple(trailing) if unbatched else (batch, *trailing)]
  if broadcast and not unbatched:
    want.append(tuple(trailing))
  if (x.shape not in want or not jnp.issubdtype(x.dtype, kind)
      or jnp.issubdtype(x.dtype, jnp.bool_)):
    what = "an integer" if kind is jnp.integer else "a floating-point"
    shapes = " or ".join(str(w) for w in want)
    raise ValueError(f"{name} must be {what} array of shape {shapes}; got {name}.shape="
                     f"{x.shape}, {name}.dtype={x.dtype}")
  x = x.astype(jnp.int32 if kind is jnp.integer else jnp.float32)
  return x[None] if unbatched else jnp.broadcast_to(x, (batch, *trailing))


def check_window(window):
  """local_window_size as (left, right), each an int >= 0 or None; or None."""
  if window is None:
    return None
  sides = (window, window) if isinstance(window, (int, np.integer)) else window
  if (not isinstance(sides, (tuple, list)) or len(sides) != 2
      or not all(x is None or (isinstance(x, (int, np.integer)) and not isinstance(x, bool)
                               and x >= 0) for x in sides)):
    raise ValueError(
        f"local_window_size must be an int >= 0 or a (left, right) pair of ints >= 0 (or "
        f"None for an unbounded side); got {window!r}")
  left, right = (None if x is None else int(x) for x in sides)
  return None if left is None and right is None else (left, right)


def check_offset(q_offset, batched):
  """(static offset, runtime [B] int32 operand or None) from `q_offset`.

  A Python int is compiled in; an array (traced or not), of shape [B] or a scalar for
  every batch element, is a runtime operand.
  """
  if isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool):
    return int(q_offset), None
  if not isinstance(q_offset, (jax.Array, np.ndarray)):
    raise ValueError(f"q_offset must be an int or an integer array of shape [B]; got "
                     f"{q_offset!r}")
  return 0, batched("q_offset", q_offset, (), jnp.integer, broadcast=True)


def check_segment_ids(q_ids, kv_ids, t, s, batched):
  if q_ids is None and kv_ids is None:
    return None, None
  if q_ids is None:
    raise ValueError("kv_segment_ids needs q_segment_ids too (a query sees only keys of its "
                     "own segment)")
  if kv_ids is None:
    if t != s:
      raise ValueError(
          f"q_segment_ids alone needs T == S (the keys then use the same ids); got T={t}, "
          f"S={s}: pass kv_segment_ids too")
    kv_ids = q_ids
  return (batched("q_segment_ids", q_ids, (t,), jnp.integer),
          batched("kv_segment_ids", kv_ids, (s,), jnp.integer))


def check_alibi(slopes, n, batched):
  if slopes is None:
    return None
  return batched("alibi_slopes", slopes, (n,), jnp.floating, broadcast=True)


def check_soft_cap(cap):
  if cap is None:
    return None
  if isinstance(cap, jax.core.Tracer):
    raise ValueError(f"logits_soft_cap must be known at trace time; got a traced value {cap!r}")
  if isinstance(cap, (bool, np.bool_)) or not isinstance(
      cap, (numbers.Real, np.ndarray, np.generic, jax.Array)) or np.size(cap) != 1:
    raise ValueError(f"logits_soft_cap must be a positive finite number or None; got {cap!r}")
  value = float(np.asarray(cap).reshape(()))
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"logits_soft_cap must be a positive finite number or None; got {value!r}")
  return value


def _scores_operand(name, x, kinds, what, *, unbatched, batch, num_heads, q_len, kv_len):
  """`x` broadcastable to [B, N, T, S] ([N, T, S] unbatched) as [B or 1, N or 1, T, S].

  Its batch and head axes stay 1 where it is broadcast over them; its T and S axes are
  broadcast in full (that is what the kernels tile).
  """
  if x is None:
    return None
  x = x if isinstance(x, jax.Array) else jnp.asarray(x)
  full = (num_heads, q_len, kv_len) if unbatched else (batch, num_heads, q_len, kv_len)
  letters = "[N, T, S]" if unbatched else "[B, N, T, S]"
  if not any(jnp.issubdtype(x.dtype, kind) for kind in kinds):
    raise ValueError(f"{name} must be {what}; got {name}.dtype={x.dtype}")
  try:
    shape = jnp.broadcast_shapes(x.shape, full)
  except ValueError:
    shape = None
  if shape != full:
    raise ValueError(f"{name} must be broadcastable to {letters} = {full}; got "
                     f"{name}.shape={x.shape}")
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  return jnp.broadcast_to(x, (*x.shape[:2], q_len, kv_len))


def check_bias(bias, **shapes):
  """The bias as [B or 1, N or 1, T, S] in its float dtype, or None."""
  return _scores_operand("bias", bias, (jnp.floating,), "a floating-point array", **shapes)


def check_mask(mask, **shapes):
  """(dense mask, mask object): an int8 [B or 1, N or 1, T, S] array or None, and a
  static `jflash.masks.Mask` or None."""
  if isinstance(mask, sparsity.Mask):
    mask.check(shapes["q_len"], shapes["kv_len"])
    return None, mask
  mask = _scores_operand("mask", mask, (jnp.bool_,),
                         "a boolean array (True: attend) or a jflash.masks mask object",
                         **shapes)
  return (None if mask is None else mask.astype(jnp.int8)), None


def check_dropout(rate, rng, batch: int, num_heads: int):
  """(rate as a float, [B, N] uint32 dropout seeds or None)."""
  if isinstance(rate, jax.core.Tracer):
    raise ValueError(f"dropout_rate must be known at trace time; got a traced value {rate!r}")
  rate = dropout.check_rate(rate)
  if rate == 0.0:
    return 0.0, None
  if rng is None:
    raise ValueError(f"dropout_rate={rate} needs a dropout_rng (a JAX PRNG key); got None")
  return rate, dropout.head_seeds(rng, batch, num_heads)
