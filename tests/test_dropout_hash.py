"""The dropout hash (jflash.dropout): oracle agreement, statistics, Pallas lowering.

The NumPy oracle (tests/dropout_numpy.py) is written from the specification alone. The
Pallas kernel below is the pattern the attention kernels use: the head's seed read as a
scalar from a [B, N] block, keep computed on a tile from iota indices; it must match
the XLA result bitwise in interpret mode and lower to valid Triton IR for an H100.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jflash import dropout
from dropout_numpy import hash_np, head_seeds_np, keep_np

RATES = (0.0, 0.1, 0.5, 0.9)


def xla_keep(seeds, t: int, s: int, rate: float):
  """bool [B, N, T, S] from jflash.dropout in XLA (jitted)."""

  @jax.jit
  def f(seeds):
    i = jnp.arange(t, dtype=jnp.int32)[:, None]
    j = jnp.arange(s, dtype=jnp.int32)[None, :]
    per_head = lambda seed: dropout.keep(seed, i, j, rate)
    return jax.vmap(jax.vmap(per_head))(seeds)

  return np.asarray(f(seeds))


def seeds_for(seed: int, b: int, n: int):
  return dropout.head_seeds(jax.random.key(seed), b, n)


# 1. Bitwise agreement with the NumPy oracle.


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey,
                                      functools.partial(jax.random.key, impl="rbg")])
@pytest.mark.parametrize("seed", [0, 1, 2 ** 31 + 7])
def test_head_seeds_match_oracle(make_key, seed):
  key = make_key(seed)
  got = dropout.head_seeds(key, 3, 5)
  assert got.dtype == jnp.uint32 and got.shape == (3, 5)
  words = np.asarray(jax.random.key_data(key))
  np.testing.assert_array_equal(np.asarray(got), head_seeds_np(words, 3, 5))
  assert len(np.unique(np.asarray(got))) == 15
  # Jitted (the key traced) gives the same seeds.
  np.testing.assert_array_equal(np.asarray(jax.jit(dropout.head_seeds, static_argnums=(1, 2))(
      key, 3, 5)), np.asarray(got))


def test_head_seeds_are_global():
  """Seeds of a batch prefix equal the prefix of the seeds; all B * N are distinct."""
  key = jax.random.key(3)
  full = np.asarray(dropout.head_seeds(key, 64, 64))
  np.testing.assert_array_equal(np.asarray(dropout.head_seeds(key, 2, 64)), full[:2])
  assert len(np.unique(full)) == full.size


@pytest.mark.parametrize("seed", [0, 12345])
@pytest.mark.parametrize("t, s", [(1, 1), (17, 200), (200, 17), (1, 257)])
@pytest.mark.parametrize("rate", RATES)
def test_keep_matches_oracle(seed, t, s, rate):
  key = jax.random.key(seed)
  seeds = dropout.head_seeds(key, 2, 3)
  expect = keep_np(head_seeds_np(np.asarray(jax.random.key_data(key)), 2, 3), t, s, rate)
  np.testing.assert_array_equal(xla_keep(seeds, t, s, rate), expect)


def test_bits_match_oracle_and_int32_seeds():
  seeds = seeds_for(7, 2, 2)
  i = jnp.arange(33, dtype=jnp.int32)[:, None]
  j = jnp.arange(65, dtype=jnp.int32)[None, :]
  got = jax.vmap(jax.vmap(lambda sd: dropout.bits(sd, i, j)))(seeds)
  np.testing.assert_array_equal(np.asarray(got), hash_np(np.asarray(seeds), 33, 65))
  # An int32 seed of the same bits gives the same mask.
  as_int = jax.lax.bitcast_convert_type(seeds, jnp.int32)
  np.testing.assert_array_equal(np.asarray(dropout.bits(as_int[1, 0], i, j)),
                                np.asarray(got[1, 0]))


def test_large_indices_match_oracle():
  """Indices up to 2^31 - 1 (global indices of long or sharded sequences), on Python ints."""
  seed = seeds_for(9, 1, 1)[0, 0]
  idx = (0, 1, 1 << 20, 2 ** 31 - 1)
  got = np.asarray(dropout.bits(seed, jnp.array(idx, jnp.int32)[:, None],
                                jnp.array(idx, jnp.int32)[None, :]))
  sd, m = int(seed), 2 ** 32 - 1
  for a, i in enumerate(idx):
    for b, j in enumerate(idx):
      r = _mix_ref(sd ^ ((i * 0x9E3779B9) & m))
      c = _mix_ref((sd + j * 0x85EBCA77) & m)
      assert int(got[a, b]) == _mix_ref((r + c) & m), (i, j)


def _mix_ref(x: int) -> int:
  """lowbias32 on Python ints (a third, scalar implementation)."""
  m = 2 ** 32 - 1
  x ^= x >> 16
  x = (x * 0x7FEB352D) & m
  x ^= x >> 15
  x = (x * 0x846CA68B) & m
  return x ^ (x >> 16)


# 2. Statistics of the mask.


@pytest.fixture(scope="module")
def big_hash():
  """uint32 [4, 8, 256, 256] hashes of one key."""
  seeds = seeds_for(2024, 4, 8)
  i = jnp.arange(256, dtype=jnp.int32)[:, None]
  j = jnp.arange(256, dtype=jnp.int32)[None, :]
  return np.asarray(jax.jit(jax.vmap(jax.vmap(lambda sd: dropout.bits(sd, i, j))))(seeds))


def _z(observed: float, p: float, count: int) -> float:
  """Standard score of an observed frequency of `count` Bernoulli(p) trials."""
  return (observed - p) / np.sqrt(p * (1 - p) / count)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_statistics(big_hash, rate):
  k = big_hash >= np.uint32(dropout.threshold(rate))
  p = dropout.keep_probability(rate)
  assert abs(p - (1 - rate)) <= 2.0 ** -32
  assert abs(_z(k.mean(), p, k.size)) < 5, k.mean()
  # Neighbours along each axis (and diagonals) agree as often as independent draws.
  agree = p * p + (1 - p) * (1 - p)
  upper = np.triu(np.ones((256, 256), bool), 1)
  pairs = {
      "rows": (k[:, :, 1:], k[:, :, :-1]),
      "columns": (k[..., 1:], k[..., :-1]),
      "diagonal": (k[:, :, 1:, 1:], k[:, :, :-1, :-1]),
      "anti-diagonal": (k[:, :, 1:, :-1], k[:, :, :-1, 1:]),
      "transpose": (k[..., upper], np.swapaxes(k, 2, 3)[..., upper]),  # i < j
      "heads": (k[:, 1:], k[:, :-1]),
      "batch": (k[1:], k[:-1]),
      "rows 128 apart": (k[:, :, 128:], k[:, :, :128]),
  }
  for name, (a, b) in pairs.items():
    z = _z((a == b).mean(), agree, a.size)
    assert abs(z) < 5, (name, z)
  # The parity of 2 x 2 rectangles: a mask separable in (i, j) would fail this.
  x = k.astype(np.int8)
  parity_p = (1 - (1 - 2 * p) ** 4) / 2
  for di, dj in [(1, 1), (1, 7), (16, 1), (64, 64)]:
    par = x[..., :-di, :-dj] ^ x[..., di:, :-dj] ^ x[..., :-di, dj:] ^ x[..., di:, dj:]
    z = _z(par.mean(), parity_p, par.size)
    assert abs(z) < 5, ((di, dj), z)
  # No two rows, columns or heads are identical.
  rows = np.packbits(k.reshape(-1, 256), axis=1)
  assert len(np.unique(rows, axis=0)) == rows.shape[0]
  cols = np.packbits(np.swapaxes(k, 2, 3).reshape(-1, 256), axis=1)
  assert len(np.unique(cols, axis=0)) == cols.shape[0]


def test_hash_bits_are_balanced(big_hash):
  """Every bit of h is 1 half the time (h is what the threshold compares)."""
  for bit in range(32):
    ones = ((big_hash >> np.uint32(bit)) & 1).mean()
    assert abs(_z(ones, 0.5, big_hash.size)) < 5, bit


def test_keys_differ_and_rate_zero_keeps_all():
  a = xla_keep(seeds_for(0, 2, 2), 64, 64, 0.5)
  b = xla_keep(seeds_for(1, 2, 2), 64, 64, 0.5)
  c = xla_keep(dropout.head_seeds(jax.random.fold_in(jax.random.key(0), 1), 2, 2), 64, 64, 0.5)
  assert abs((a == b).mean() - 0.5) < 0.02 and abs((a == c).mean() - 0.5) < 0.02
  assert xla_keep(seeds_for(0, 2, 2), 64, 64, 0.0).all()
  np.testing.assert_array_equal(a, xla_keep(seeds_for(0, 2, 2), 64, 64, 0.5))


# 3. Inverted dropout is unbiased.


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_inverted_dropout_is_unbiased(rate):
  """Over 512 keys, mean keep * scale(rate) is 1 at every (i, j) and overall."""
  keys = jax.random.split(jax.random.key(11), 512)
  seeds = jax.vmap(lambda k: dropout.head_seeds(k, 1, 1)[0, 0])(keys)
  i = jnp.arange(32, dtype=jnp.int32)[:, None]
  j = jnp.arange(32, dtype=jnp.int32)[None, :]
  k = np.asarray(jax.vmap(lambda sd: dropout.keep(sd, i, j, rate))(seeds))
  p = dropout.keep_probability(rate)
  mean = k.mean(axis=0) * dropout.scale(rate)  # [32, 32], each over 512 draws
  sd_one = np.sqrt((1 - p) / (p * 512))  # std of the scaled mean of 512 Bernoulli(p)
  assert np.abs(mean - 1).max() < 5 * sd_one
  assert abs(mean.mean() - 1) < 5 * sd_one / 32


# 4. Inside a Pallas kernel: interpret mode equals XLA; Triton lowering is valid.


def _keep_kernel(seed_ref, out_ref, *, rate: float, block_t: int, block_s: int):
  b, n = pl.program_id(0), pl.program_id(1)
  t0, s0 = pl.program_id(2) * block_t, pl.program_id(3) * block_s
  seed = seed_ref[b, n]
  q_idx = (t0 + jnp.arange(block_t, dtype=jnp.int32))[:, None]
  kv_idx = (s0 + jnp.arange(block_s, dtype=jnp.int32))[None, :]
  out_ref[...] = dropout.keep(seed, q_idx, kv_idx, rate).astype(out_ref.dtype)


def keep_pallas(seeds, t: int, s: int, rate: float, *, block: int = 32,
                interpret: bool = False, dtype=jnp.int32):
  b, n = seeds.shape
  kernel = functools.partial(_keep_kernel, rate=rate, block_t=block, block_s=block)
  return pl.pallas_call(
      kernel,
      grid=(b, n, t // block, s // block),
      in_specs=[pl.BlockSpec((b, n), lambda *_: (0, 0))],
      out_specs=pl.BlockSpec((None, None, block, block), lambda bi, ni, ti, si: (bi, ni, ti, si)),
      out_shape=jax.ShapeDtypeStruct((b, n, t, s), dtype),
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret,
      name="jflash_dropout_test",
  )(seeds)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_pallas_interpret_matches_xla(rate):
  seeds = seeds_for(5, 2, 4)
  got = jax.jit(functools.partial(keep_pallas, t=64, s=128, rate=rate, interpret=True))(seeds)
  np.testing.assert_array_equal(np.asarray(got).astype(bool), xla_keep(seeds, 64, 128, rate))


@pytest.mark.parametrize("rate, block, dtype", [(0.1, 32, jnp.int32), (0.5, 64, jnp.int8),
                                                (0.0, 32, jnp.int8), (0.9, 64, jnp.int32)])
def test_pallas_kernel_lowers_to_valid_triton_ir(triton_modules, rate, block, dtype):
  seeds = jax.ShapeDtypeStruct((2, 4), jnp.uint32)
  f = functools.partial(keep_pallas, t=128, s=128, rate=rate, block=block, dtype=dtype)
  jax.jit(f).trace(seeds).lower(lowering_platforms=("cuda",))
  assert len(triton_modules) == 1
  module = triton_modules[0]
  assert module.operation.verify()
  ir = str(module)
  # Unsigned semantics survived the signless Triton types.
  assert "arith.shrui" in ir and "arith.cmpi uge" in ir and "arith.muli" in ir, ir
  assert "arith.shrsi" not in ir


def test_triton_ir_has_the_constants(triton_modules):
  """The multipliers above 2^31 reach the IR as their 32-bit two's complement values."""
  seeds = jax.ShapeDtypeStruct((1, 1), jnp.uint32)
  jax.jit(functools.partial(keep_pallas, t=32, s=32, rate=0.5)).trace(seeds).lower(
      lowering_platforms=("cuda",))
  ir = str(triton_modules[0])
  for k in (0x7FEB352D, 0x846CA68B, 0x9E3779B9, 0x85EBCA77):
    signed = k - (1 << 32) if k >= 1 << 31 else k
    assert f"arith.constant {signed} : i32" in ir or f"arith.constant dense<{signed}>" in ir, (
        hex(k), ir)


# 5. Errors.


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, 1j, "0.1",
                                  None, np.array([0.1]), jnp.float32(0.1)])
def test_check_rate_rejects(rate):
  with pytest.raises(ValueError, match="rate="):
    dropout.check_rate(rate)


def test_check_rate_accepts():
  assert dropout.check_rate(0) == 0.0
  assert dropout.check_rate(np.float32(0.25)) == 0.25
  assert dropout.threshold(0.5) == 2 ** 31
  assert dropout.threshold(1 - 2.0 ** -40) == 2 ** 32 - 1  # rounds to 1: kept w.p. 2^-32
  assert dropout.scale(0.5) == 2.0
  with pytest.raises(ValueError, match="rate="):
    dropout.keep(np.uint32(0), jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), 1.0)


@pytest.mark.parametrize("key", [
    np.zeros((2,), np.int32), jnp.zeros((3,), jnp.uint32), jnp.zeros((2, 2), jnp.uint32),
    jax.random.split(jax.random.key(0), 2), 5, "key", jnp.zeros((2,), jnp.float32)])
def test_head_seeds_rejects_non_keys(key):
  with pytest.raises(ValueError, match="key of shape"):
    dropout.head_seeds(key, 2, 2)


@pytest.mark.parametrize("batch, heads", [(-1, 2), (2, 2.0), (True, 2), (2 ** 17, 2 ** 16)])
def test_head_seeds_rejects_bad_sizes(batch, heads):
  with pytest.raises(ValueError, match="batch=|num_heads="):
    dropout.head_seeds(jax.random.key(0), batch, heads)


def test_keep_rejects_float_indices():
  with pytest.raises(ValueError, match="int32 or uint32"):
    dropout.keep(np.uint32(0), jnp.zeros((2, 1)), jnp.zeros((1, 2), jnp.int32), 0.5)
