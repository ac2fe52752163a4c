"""Dropout on attention probabilities from a counter-based hash.

FlashAttention never materialises the T x S probability matrix, so it cannot store a
dropout mask either: the forward pass draws the keep decision of score (i, j) on chip
and the backward pass draws it again, bitwise the same, instead of reading it back
(Dao et al. 2022, Sec. 3.1; FlashAttention-2 hashes the indices with Philox). That needs
a *counter-based* generator: a pure function of (seed, i, j), with no state carried from
one tile to the next. This module is that function, shared by the Pallas kernels
(Triton lowering and interpret mode) and the pure-JAX backend, so one key gives bitwise
the same mask on every backend and at every device count.

The mixer is ``lowbias32`` (C. Wellons, hash-prospector, 2018): the shape of
MurmurHash3's ``fmix32`` finaliser (A. Appleby), two multiply-xorshift rounds, with
constants of lower bias::

    mix(x) = x ^= x >> 16;  x *= 0x7feb352d;  x ^= x >> 15;  x *= 0x846ca68b;  x ^= x >> 16

a bijection of uint32 (all arithmetic wraps mod 2^32). From a key (words w_0 .. w_{m-1},
m = 2 for threefry) and the raw global indices b (batch row), n (query head), i (query)
and j (key)::

    seed[b, n] = y_m,  y_0 = (b * N + n) * 0xC2B2AE3D,  y_{k+1} = mix(y_k ^ w_k)
    r_i        = mix(seed ^ (i * 0x9E3779B9))          (per query row)
    c_j        = mix(seed + j * 0x85EBCA77)            (per key column)
    h[i, j]    = mix(r_i + c_j)
    keep[i, j] = h[i, j] >= round(rate * 2^32)         (unsigned; threshold <= 2^32 - 1)

:func:`head_seeds` runs in plain XLA, once per call. Seeds of one key are distinct for
all B * N heads (a chain of bijections of b * N + n), and a head's seed depends on the
key, b, n and N only: a batch or head shard reads its slice of the global [B, N] seeds
and draws the same masks as one device. In a kernel, :func:`keep` with query indices of
shape [rows, 1] and key indices [1, cols] costs one ``mix`` per row and per column and,
per score, one add, one ``mix`` (2 multiplies, 3 shift-xors) and one compare. Distinct
(i, j) of one head never share a row or column hash input, the row and column hashes
coincide only at (0, 0) for every seed (``seed ^ i K`` vs ``seed + j K'``), and the
per-score ``mix`` removes the separable structure of ``r_i + c_j``.

Keep probabilities are quantised to 2^-32: ``rate`` is rounded to the nearest multiple
of 2^-32 (:func:`keep_probability` gives the exact value and :func:`scale` its inverse,
which makes inverted dropout exactly unbiased). The ops are 32-bit unsigned integer
multiply (wrapping), add, xor, logical right shift and an unsigned compare, all of which
lower in XLA, in Pallas interpret mode and in Pallas's Triton backend (integers are
signless there; uint32 picks ``shrui`` and ``cmpi uge``).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

# lowbias32 (Wellons): shifts and multipliers of its two multiply-xorshift rounds.
_MIX_M1, _MIX_M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_HEAD_K = np.uint32(0xC2B2AE3D)  # odd: b * N + n -> y_0 is a bijection
_ROW_K = np.uint32(0x9E3779B9)   # 2^32 / golden ratio, odd
_COL_K = np.uint32(0x85EBCA77)   # odd
_TWO32 = 1 << 32


def mix(x):
  """lowbias32: a bijective 32-bit finaliser; uint32 array in, uint32 array out."""
  x = x ^ (x >> np.uint32(16))
  x = x * _MIX_M1
  x = x ^ (x >> np.uint32(15))
  x = x * _MIX_M2
  return x ^ (x >> np.uint32(16))


def check_rate(rate) -> float:
  """The dropout rate as a Python float, checked.

  Args:
    rate: the probability of dropping a score; a static real number in [0, 1).

  Returns:
    float(rate).

  Raises:
    ValueError: `rate` is not a real Python/NumPy number (e.g. a bool, complex number,
      string or array, traced or not) or lies outside [0, 1).
  """
  if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
    raise ValueError(f"dropout_rate={rate!r} (type {type(rate).__name__}) must be a real "
                     "Python number in [0, 1)")
  value = float(rate)
  if not (math.isfinite(value) and 0.0 <= value < 1.0):
    raise ValueError(f"dropout_rate={rate!r} must lie in [0, 1)")
  return value


def threshold(rate) -> int:
  """round(rate * 2^32), at most 2^32 - 1: a hash h is kept iff h >= this (unsigned).

  Raises:
    ValueError: from :func:`check_rate`.
  """
  return min(round(check_rate(rate) * _TWO32), _TWO32 - 1)


def keep_probability(rate) -> float:
  """The exact keep probability, 1 - threshold(rate) / 2^32 (within 2^-33 of 1 - rate).

  Raises:
    ValueError: from :func:`check_rate`.
  """
  return (_TWO32 - threshold(rate)) / _TWO32


def scale(rate) -> float:
  """1 / keep_probability(rate): scaling the kept probabilities by it is unbiased.

  Raises:
    ValueError: from :func:`check_rate`.
  """
  return _TWO32 / (_TWO32 - threshold(rate))


def _key_words(key) -> jax.Array:
  """The uint32 words of one PRNG key, flat."""
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ValueError(f"key of shape {shape} (dtype {dtype}): expected one PRNG key, "
                       "a scalar typed key such as jax.random.key(0)")
    return jax.random.key_data(key).reshape(-1)
  if dtype is None or shape is None or dtype != jnp.uint32 or len(shape) != 1:
    raise ValueError(f"key of shape {shape} and dtype {dtype} ({type(key).__name__}) is not a "
                     "PRNG key: pass jax.random.key(seed) or a legacy uint32 "
                     "jax.random.PRNGKey(seed)")
  try:
    return jax.random.key_data(key).reshape(-1)
  except TypeError as e:
    raise ValueError(f"key of shape {shape} and dtype {dtype} is not a legacy PRNG key of "
                     f"the default implementation: {e}") from None


def head_seeds(key, batch: int, num_heads: int) -> jax.Array:
  """One 32-bit seed per (batch row, query head), from a JAX PRNG key.

  Plain XLA (call it outside the kernels, under jit or not). All B * N seeds of one key
  are distinct; seed [b, n] depends on the key, b, n and `num_heads` only, so shards over
  batch or heads use their slice of this global array.

  Args:
    key: one PRNG key: a typed key (``jax.random.key(0)``, any implementation; all its
      words are mixed in) or a legacy uint32 key (``jax.random.PRNGKey(0)``).
    batch: B >= 0, a Python int.
    num_heads: N >= 0, the number of query heads, a Python int; B * N <= 2^32.

  Returns:
    uint32 [B, N].

  Raises:
    ValueError: `key` is not a single PRNG key (its shape and dtype are named), or
      `batch` / `num_heads` are not non-negative ints with B * N <= 2^32.
  """
  for name, value in (("batch", batch), ("num_heads", num_heads)):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
      raise ValueError(f"{name}={value!r} must be a non-negative int")
  if batch * num_heads > _TWO32:
    raise ValueError(f"batch={batch} x num_heads={num_heads} exceeds 2^32 heads")
  words = _key_words(key)
  b = jnp.arange(batch, dtype=jnp.uint32)[:, None]
  n = jnp.arange(num_heads, dtype=jnp.uint32)[None, :]
  y = (b * np.uint32(num_heads % _TWO32) + n) * _HEAD_K
  for k in range(words.shape[0]):
    y = mix(y ^ words[k])
  return y


def _as_uint32(x):
  x = jnp.asarray(x)
  if x.dtype not in (jnp.int32, jnp.uint32):
    raise ValueError(f"expected int32 or uint32 indices/seeds, got dtype {x.dtype}")
  return x.astype(jnp.uint32)  # same bits: a no-op in Triton, modular in XLA


def bits(seed, q_idx, kv_idx):
  """The 32-bit hash h of (seed, i, j), broadcast over `q_idx` and `kv_idx`.

  Works on jnp arrays and inside Pallas kernels (Triton and interpret mode).

  Args:
    seed: a scalar of :func:`head_seeds` (uint32; int32 is taken bit for bit).
    q_idx: int32 raw query indices i >= 0, e.g. [rows, 1].
    kv_idx: int32 raw key indices j >= 0, e.g. [1, cols].

  Returns:
    uint32 of the broadcast shape of `q_idx` and `kv_idx` (and `seed`).

  Raises:
    ValueError: an operand is not int32 or uint32.
  """
  seed = _as_uint32(seed)
  r = mix(seed ^ (_as_uint32(q_idx) * _ROW_K))
  c = mix(seed + _as_uint32(kv_idx) * _COL_K)
  return mix(r + c)


def keep(seed, q_idx, kv_idx, rate: float):
  """The dropout keep mask: True where score (i, j) is kept (probability 1 - rate).

  Bitwise the same on every backend for the same arguments. Callers scale the kept
  probabilities by :func:`scale` (rate) and should skip dropout altogether at rate 0,
  where every score is kept.

  Args:
    seed: a scalar of :func:`head_seeds` (uint32; int32 is taken bit for bit).
    q_idx: int32 raw (global) query indices, e.g. [rows, 1]; not positions.
    kv_idx: int32 raw (global) key indices, e.g. [1, cols].
    rate: a static Python float in [0, 1), rounded to a multiple of 2^-32.

  Returns:
    bool of the broadcast shape of `q_idx` and `kv_idx`.

  Raises:
    ValueError: a bad `rate` (see :func:`check_rate`) or an operand that is not int32
      or uint32.
  """
  thr = threshold(rate)
  return bits(seed, q_idx, kv_idx) >= np.uint32(thr)
