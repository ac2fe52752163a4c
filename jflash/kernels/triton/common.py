"""Helpers shared by the Triton-lowered forward and backward kernels."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def tile_size(block: int, length: int) -> int:
  """`block` shrunk to the smallest power of two >= `length`, but at least 16."""
  return min(block, max(16, 1 << (length - 1).bit_length()))


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def dot_precision(dtype):
  """Exact fp32 products for float32 inputs (no TF32); native MMA for 16-bit inputs."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def head_mask(head_dim: int, padded: int):
  """[1, padded] bool mask of the real head-dim columns, or None if there is no padding."""
  if head_dim == padded:
    return None
  return (jnp.arange(padded) < head_dim)[None, :]


def _both(rows, cols):
  if rows is None:
    return cols
  if cols is None:
    return rows
  return rows & cols


def load(ref, rows=None, cols=None, other=0.0):
  """Loads a 2-D tile, reading only where `rows` ([n, 1]) and `cols` ([1, m]) hold."""
  mask = _both(rows, cols)
  if mask is None:
    return plgpu.load(ref)
  return plgpu.load(ref, mask=mask, other=other)


def store(ref, value, rows=None, cols=None):
  """Stores a tile, writing only where `rows` and `cols` hold."""
  mask = _both(rows, cols)
  if mask is None:
    plgpu.store(ref, value)
  else:
    plgpu.store(ref, value, mask=mask)


def q_tile_index(program, num_q_tiles: int, is_causal: bool):
  """Query tile of a program: causal tiles run longest first, so short ones fill the tail."""
  return num_q_tiles - 1 - program if is_causal else program



def exp2(x, c: float):
  """2 ** (x * c), without the multiply when c is 1."""
  return jnp.exp2(x if c == 1.0 else x * c)


def lse_operand(lse, dtype):
  """The forward's natural-log lse in the form `probabilities` takes for inputs of `dtype`."""
  return lse if jnp.dtype(dtype) == jnp.float32 else lse * LOG2E


def probabilities(s, lse, scale: float, dtype):
  """P = exp(scale * s - lse) from fp32 scores `s` and `lse` from `lse_operand(., dtype)`.

  16-bit inputs take one FFMA per score in base 2 (s * scale log2(e) - lse log2(e), as
  FlashAttention-3); its two roundings at |scale s| ~ 100 shift the exponent by ~1e-5,
  far below 16-bit rounding. float32 inputs subtract in natural units first (exact at the
  row max), then go to base 2: the arithmetic of the xla backend and of FA-2's emulation
  in tests/test_numerics.py.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.exp2((s * scale - lse) * LOG2E)
  return jnp.exp2(s * (scale * LOG2E) - lse)
