"""Forward, lse and gradients of both implementations against the fp32 oracle."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jflash
from jflash.reference import dense_attention
from conftest import (HOPPER, IMPLEMENTATIONS, ON_GPU, assert_within_criterion, interpret_for,
                      jax_nn_with_grads, jflash_with_grads, max_err, oracle_with_grads,
                      random_inputs)

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32

# (B, T, S, N, K, H, is_causal, dtype): every T, S in {1, 17, 128, 200, 257}, every H in
# {32, 64, 80, 128, 256} plus odd ones (1, 96, 200), GQA ratios 1, 2 and N, causal on and
# off, T < S and T > S, each dtype; chosen so that most pairs of those values meet.
CASES = [
    (2, 1, 1, 2, 1, 32, False, F32),
    (1, 1, 17, 4, 2, 64, True, BF16),
    (2, 17, 17, 4, 4, 80, True, F16),
    (1, 17, 200, 4, 1, 128, False, F32),
    (1, 128, 128, 4, 2, 64, True, BF16),
    (2, 128, 257, 2, 2, 256, False, BF16),
    (1, 200, 200, 4, 2, 32, True, F32),
    (1, 200, 17, 4, 4, 128, True, F16),
    (1, 257, 257, 3, 1, 80, True, BF16),
    (1, 257, 128, 2, 1, 256, True, F32),
    (2, 17, 257, 4, 2, 32, True, F16),
    (1, 128, 1, 2, 2, 128, False, BF16),
    (1, 257, 200, 4, 2, 64, False, F16),
    (2, 200, 128, 8, 8, 256, False, F16),
    (1, 1, 257, 4, 4, 80, False, F32),
    (2, 128, 17, 6, 3, 32, False, BF16),
    (1, 257, 1, 2, 1, 64, True, F16),
    (1, 17, 128, 4, 1, 256, True, BF16),
    (1, 33, 40, 2, 1, 1, True, F32),
    (1, 64, 64, 2, 2, 200, False, BF16),
    (1, 70, 90, 2, 1, 96, True, F16),
]


def _case_id(case):
  b, t, s, n, k, h, causal, dtype = case
  return f"B{b}-T{t}-S{s}-N{n}-K{k}-H{h}-{'causal' if causal else 'full'}-{jnp.dtype(dtype).name}"


def check_case(case, implementation, config=None, seed=0):
  b, t, s, n, kv_heads, h, is_causal, dtype = case
  q, k, v, do = random_inputs(seed, b, t, s, n, kv_heads, h, dtype)
  scale = h ** -0.5
  out_ref, lse_ref, grads_ref = oracle_with_grads(q, k, v, do, scale=scale, is_causal=is_causal)
  out_nn, grads_nn = jax_nn_with_grads(q, k, v, do, scale=scale, is_causal=is_causal)

  (out, lse), grads = jflash_with_grads(q, k, v, do, implementation=implementation,
                                        is_causal=is_causal, config=config)

  chex.assert_shape(out, (b, t, n, h))
  chex.assert_shape(lse, (b, t, n))
  chex.assert_type([out, *grads], dtype)
  chex.assert_type(lse, jnp.float32)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, (q, k, v))
  chex.assert_tree_all_finite((out, lse, grads))
  assert_within_criterion("out", max_err(out, out_ref), max_err(out_nn, out_ref))
  # jax.nn returns no lse: hold it to fp32 rounding of the logits' magnitude.
  assert max_err(lse, lse_ref) <= 1e-5 * (1 + float(jnp.max(jnp.abs(lse_ref))))
  for name, g, g_ref, g_nn in zip(("dq", "dk", "dv"), grads, grads_ref, grads_nn):
    assert_within_criterion(name, max_err(g, g_ref), max_err(g_nn, g_ref))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + (("mosaic_gpu",) if HOPPER else ()))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_oracle(case, implementation):
  if implementation == "mosaic_gpu" and case[-1] == F32:  # Hopper kernels take 16-bit inputs
    with pytest.raises(NotImplementedError, match="float32.*implementation='triton' can"):
      check_case(case, implementation)
    return
  check_case(case, implementation)


def _fp32(case):
  return case[:-1] + (F32,)


# The oracle's own check: the case list in fp32, without duplicates.
ORACLE_CASES = list(dict.fromkeys(_fp32(case) for case in CASES))
# Jitted (eager jax.nn compiles op by op); fine in fp32, whose dot precision needs no
# eager fallback.
_jax_nn_fp32 = jax.jit(jax_nn_with_grads, static_argnames=("scale", "is_causal"))


@pytest.mark.parametrize("case", ORACLE_CASES, ids=_case_id)
def test_oracle_matches_jax_nn_in_fp32(case):
  """The oracle against an independent implementation, tightly, forward and VJP.

  `dense_attention` and `jax.nn.dot_product_attention(implementation="xla")` share no
  code; in fp32 at HIGHEST matmul precision (conftest) they differ only by fp32
  rounding (measured: at most 1.4e-6 of the largest |value| over these cases, bound
  1e-5). So a
  broken oracle (mask, GQA head mapping, scale, T != S) fails here by orders of
  magnitude, instead of agreeing with a kernel that shares its bug. lse, which jax.nn
  does not return, is checked against a float64 NumPy logsumexp with np.tril's mask.
  """
  b, t, s, n, kv_heads, h, is_causal, _ = case
  q, k, v, do = random_inputs(20, b, t, s, n, kv_heads, h, F32)
  scale = h ** -0.5
  out_ref, lse_ref, grads_ref = oracle_with_grads(q, k, v, do, scale=scale, is_causal=is_causal)
  out_nn, grads_nn = _jax_nn_fp32(q, k, v, do, scale=scale, is_causal=is_causal)
  for name, x, ref in zip(("out", "dq", "dk", "dv"), (out_nn, *grads_nn), (out_ref, *grads_ref)):
    # Relative to the largest |value|, but at least to 1 (the inputs' scale): with one
    # key (S=1) dq and dk are pure rounding residues (~1e-7) in both.
    size = max(float(jnp.max(jnp.abs(ref))), 1.0)
    assert max_err(x, ref) <= 1e-5 * size, (name, max_err(x, ref), size)

  q64, k64 = (np.asarray(x, np.float64) for x in (q, k))
  k64 = np.repeat(k64, n // kv_heads, axis=2)
  scores = np.einsum("btnh,bsnh->bnts", q64, k64) * scale
  if is_causal:
    scores = np.where(np.tril(np.ones((t, s), bool)), scores, -np.inf)
  top = scores.max(axis=-1, keepdims=True)
  lse64 = (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0]
  np.testing.assert_allclose(np.asarray(lse_ref), np.moveaxis(lse64, 1, 2), rtol=2e-6, atol=2e-6)


# Small tiles, so one call has many tiles of each kind: fully visible, straddling the
# diagonal, ragged at the end of T and of S, and (for the dK/dV kernel) skipped.
SMALL_TILES = {
    "triton": jflash.TritonConfig(block_q=32, block_kv=16, num_warps=4, num_stages=2,
                                  block_q_dkv=16, block_kv_dkv=32, block_q_dq=32,
                                  block_kv_dq=16),
    "xla": jflash.XlaConfig(block_q=32, block_kv=16),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", [
    (1, 100, 100, 2, 1, 64, True, F32),
    (1, 70, 130, 4, 2, 32, True, BF16),
    (1, 130, 70, 2, 2, 32, False, F16),
], ids=_case_id)
def test_many_tiles(case, implementation):
  check_case(case, implementation, config=SMALL_TILES[implementation])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lse_is_differentiable(implementation):
  """d(sum lse)/dq against the oracle: the lse cotangent path of the custom_vjp."""
  q, k, v, _ = random_inputs(1, 1, 40, 50, 2, 1, 32, F32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  def ours(q, k, v):
    return jflash.attention(q, k, v, is_causal=True, implementation=implementation,
                            interpret=interpret_for(implementation), return_lse=True)[1]

  def oracle(q, k, v):
    return dense_attention(q, k, v, scale=32 ** -0.5, is_causal=True)[1]

  grads = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  grads_ref = jax.grad(loss(oracle), argnums=(0, 1, 2))(q, k, v)
  chex.assert_trees_all_close(grads, grads_ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_unbatched_matches_batched(implementation):
  q, k, v, _ = random_inputs(2, 1, 33, 20, 4, 2, 64, F32)
  kwargs = dict(implementation=implementation, interpret=interpret_for(implementation),
                return_lse=True)
  out, lse = jflash.attention(q[0], k[0], v[0], **kwargs)
  out_b, lse_b = jflash.attention(q, k, v, **kwargs)
  chex.assert_shape(out, (33, 4, 64))
  chex.assert_shape(lse, (33, 4))
  chex.assert_trees_all_equal((out, lse), (out_b[0], lse_b[0]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_custom_scale(implementation):
  q, k, v, _ = random_inputs(3, 1, 40, 40, 2, 2, 32, F32)
  out = jflash.attention(q, k, v, scale=0.05, implementation=implementation,
                         interpret=interpret_for(implementation))
  ref, _ = dense_attention(q, k, v, scale=0.05, is_causal=False)
  chex.assert_trees_all_close(out, ref, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_single_key_rows(implementation):
  """S=1: out = v, lse = scale q.k, dv = sum(do), and dq = dk = 0 up to fp32 rounding.

  jax.nn gets dq = dk = 0 exactly here (its softmax VJP over one element cancels
  exactly), which makes the 2x-jax.nn criterion degenerate: FlashAttention's
  delta = rowsum(dO * O) and the dP matmul sum the same products in different orders.
  So this case is held to the rounding bound of that difference instead.
  """
  q, k, v, do = random_inputs(13, 1, 257, 1, 2, 1, 64, F32)
  scale = 64 ** -0.5

  def f(q, k, v):
    return jflash.attention(q, k, v, is_causal=True, implementation=implementation,
                            interpret=interpret_for(implementation), return_lse=True)

  (out, lse), vjp = jax.vjp(f, q, k, v)
  dq, dk, dv = vjp((do, jnp.zeros_like(lse)))
  eps = float(jnp.finfo(F32).eps)
  chex.assert_trees_all_close(out, jnp.broadcast_to(v, out.shape), rtol=2 * eps, atol=0)
  chex.assert_trees_all_close(lse, scale * jnp.einsum("btnh,bsnh->btn", q, k), rtol=4 * eps,
                              atol=4 * eps)
  # dv = sum_i p_i dO_i with p_i = 1 up to the rounding of exp2 of a rounding residue.
  dv_bound = 1e-6 * jnp.sum(jnp.abs(do), axis=(1, 2))[:, None, None]
  assert jnp.all(jnp.abs(dv - jnp.sum(do, axis=(1, 2))[:, None, None]) <= dv_bound)
  # |dP_i - delta_i| <= 2 H eps sum_h |dO_ih v_h| (two fp32 dot products of H terms).
  slack = 2 * 64 * eps * jnp.sum(jnp.abs(do) * jnp.abs(v), axis=-1)  # [B, T, N]
  assert jnp.all(jnp.abs(dq) <= scale * slack[..., None] * jnp.abs(k)[:, :1] + 1e-30)
  dk_bound = scale * jnp.einsum("btn,btnh->bh", slack, jnp.abs(q))
  assert jnp.all(jnp.abs(dk[:, 0, 0]) <= dk_bound), (float(jnp.max(jnp.abs(dk))),
                                                      float(jnp.min(dk_bound)))


def test_default_implementation_is_best_available():
  q, k, v, _ = random_inputs(4, 1, 20, 20, 2, 2, 32, F32)
  expected = "triton" if ON_GPU else "xla"
  chex.assert_trees_all_equal(jflash.attention(q, k, v),
                              jflash.attention(q, k, v, implementation=expected))
