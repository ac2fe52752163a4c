"""An independent NumPy implementation of jflash's dropout hash: the tests' oracle.

Written from the specification in :mod:`jflash.dropout`'s docstring, without importing
it; all arithmetic on uint32 wraps mod 2^32::

    mix(x)     = lowbias32: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
                 x *= 0x846ca68b; x ^= x >> 16
    seed[b, n] = y_m,  y_0 = (b * N + n) * 0xC2B2AE3D,  y_{k+1} = mix(y_k ^ w_k)
    h[i, j]    = mix(mix(seed ^ i * 0x9E3779B9) + mix(seed + j * 0x85EBCA77))
    keep       = h >= min(round(rate * 2^32), 2^32 - 1)
"""

from __future__ import annotations

import numpy as np

_U32 = np.uint32


def _mix_np(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=_U32)
  x = x ^ (x >> _U32(16))
  x = x * _U32(0x7FEB352D)
  x = x ^ (x >> _U32(15))
  x = x * _U32(0x846CA68B)
  return x ^ (x >> _U32(16))


def head_seeds_np(key_words: np.ndarray, batch: int, num_heads: int) -> np.ndarray:
  """uint32 [B, N] seeds from the uint32 words of one key (``jax.random.key_data``)."""
  words = np.asarray(key_words, dtype=_U32).reshape(-1)
  flat = (np.arange(batch, dtype=np.uint64)[:, None] * num_heads
          + np.arange(num_heads, dtype=np.uint64)[None, :])
  y = ((flat * 0xC2B2AE3D) % (1 << 32)).astype(_U32)
  for w in words:
    y = _mix_np(y ^ w)
  return y


def hash_np(seeds: np.ndarray, t: int, s: int) -> np.ndarray:
  """uint32 [B, N, T, S] hashes h of every (b, n, i, j)."""
  seeds = np.asarray(seeds, dtype=_U32)[:, :, None, None]
  i = np.arange(t, dtype=_U32)[:, None]
  j = np.arange(s, dtype=_U32)[None, :]
  with np.errstate(over="ignore"):
    row = _mix_np(seeds ^ (i * _U32(0x9E3779B9)))
    col = _mix_np(seeds + j * _U32(0x85EBCA77))
    return _mix_np(row + col)


def keep_np(seeds: np.ndarray, t: int, s: int, rate: float) -> np.ndarray:
  """bool [B, N, T, S] keep mask for uint32 seeds [B, N] and dropout `rate` in [0, 1)."""
  thr = min(round(float(rate) * 2.0 ** 32), 2 ** 32 - 1)
  return hash_np(seeds, t, s) >= _U32(thr)
