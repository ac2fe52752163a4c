"""Bad input, JAX transformations, determinism, retracing, NaN/Inf and memory."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jflash
from conftest import IMPLEMENTATIONS, ON_GPU, interpret_for, random_inputs

F32, BF16 = jnp.float32, jnp.bfloat16


def _call(implementation, *args, **kwargs):
  return jflash.attention(*args, implementation=implementation,
                          interpret=interpret_for(implementation), **kwargs)


def _arrays(q_shape, kv_shape, dtype=F32, v_shape=None):
  return (jnp.ones(q_shape, dtype), jnp.ones(kv_shape, dtype),
          jnp.ones(v_shape or kv_shape, dtype))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("shapes, message", [
    (((2, 8, 4, 32), (2, 8, 4, 32), (8, 4, 32)), r"rank 4.*v.shape=\(8, 4, 32\)"),
    (((8, 32), (8, 32), (8, 32)), r"rank 4.*q.shape=\(8, 32\)"),
    (((1, 2, 8, 4, 32),) * 3, r"rank 4"),
    (((2, 8, 4, 32), (3, 8, 4, 32), (3, 8, 4, 32)), r"batch size.*k.shape=\(3, 8, 4, 32\)"),
    (((2, 8, 4, 32), (2, 8, 4, 32), (2, 9, 4, 32)), r"same shape.*v.shape=\(2, 9, 4, 32\)"),
    (((2, 8, 4, 32), (2, 8, 4, 64), (2, 8, 4, 64)), r"head dim.*q.shape=\(2, 8, 4, 32\)"),
    (((2, 8, 6, 32), (2, 8, 4, 32), (2, 8, 4, 32)), r"N=6.*K=4"),
    (((2, 8, 4, 0), (2, 8, 4, 0), (2, 8, 4, 0)), r"H=0"),
    (((2, 8, 4, 257), (2, 8, 4, 257), (2, 8, 4, 257)), r"H=257"),
    (((2, 0, 4, 32), (2, 8, 4, 32), (2, 8, 4, 32)), r"T=0"),
    (((2, 8, 4, 32), (2, 0, 4, 32), (2, 0, 4, 32)), r"S=0"),
])
def test_bad_shapes_raise(shapes, message):
  q, k, v = (jnp.ones(s, F32) for s in shapes)
  with pytest.raises(ValueError, match=message):
    jflash.attention(q, k, v)


@pytest.mark.parametrize("dtypes, message", [
    ((jnp.int32,) * 3, r"q.dtype=int32"),
    ((F32, F32, BF16), r"v.dtype=bfloat16"),
    ((BF16, jnp.float16, BF16), r"k.dtype=float16"),
    ((jnp.bool_,) * 3, r"q.dtype=bool"),
])
def test_bad_dtypes_raise(dtypes, message):
  q, k, v = (jnp.ones((1, 4, 2, 8), d) for d in dtypes)
  with pytest.raises(ValueError, match=message):
    jflash.attention(q, k, v)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), "big", True])
def test_bad_scale_raises(scale):
  q, k, v = _arrays((1, 4, 2, 8), (1, 4, 2, 8))
  with pytest.raises(ValueError, match="scale"):
    jflash.attention(q, k, v, scale=scale)


def test_traced_scale_raises():
  q, k, v = _arrays((1, 4, 2, 8), (1, 4, 2, 8))
  with pytest.raises(ValueError, match="scale must be known at trace time.*traced"):
    jax.jit(lambda s: jflash.attention(q, k, v, scale=s))(0.5)


def test_bad_flags_raise():
  q, k, v = _arrays((1, 4, 2, 8), (1, 4, 2, 8))
  with pytest.raises(ValueError, match="implementation='cuda'"):
    jflash.attention(q, k, v, implementation="cuda")
  with pytest.raises(ValueError, match="is_causal must be a bool"):
    jflash.attention(q, k, v, is_causal="yes")
  with pytest.raises(ValueError, match="interpret=True runs Pallas kernels"):
    jflash.attention(q, k, v, implementation="xla", interpret=True)
  with pytest.raises(ValueError, match="config must be a jflash.MosaicGpuConfig.*or a jflash.TritonConfig.*or a jflash.XlaConfig"):
    jflash.attention(q, k, v, config={"block_q": 64})


@pytest.mark.skipif(ON_GPU, reason="on a GPU implementation='triton' is available")
def test_triton_without_gpu_raises_not_implemented():
  q, k, v = _arrays((1, 4, 2, 8), (1, 4, 2, 8))
  with pytest.raises(NotImplementedError, match="implementation='xla'.*interpret=True"):
    jflash.attention(q, k, v, implementation="triton")


@pytest.mark.parametrize("field, value", [
    ("block_q", 48), ("block_kv", 8), ("block_q_dkv", 1024), ("block_kv_dq", 64.0),
    ("num_warps", 3), ("num_stages", 0), ("num_stages_dq", 9), ("num_warps_dkv", True),
])
def test_config_validates_itself(field, value):
  with pytest.raises(ValueError, match=f"{field}={value!r}"):
    jflash.AttentionConfig(**{field: value})


def test_config_that_does_not_fit_raises():
  huge = jflash.AttentionConfig(block_q=256, block_kv=256, num_stages=4)
  q, k, v = _arrays((1, 256, 2, 256), (1, 256, 2, 256), BF16)
  with pytest.raises(ValueError, match=r"does not fit.*forward kernel.*head dim 256"):
    jflash.attention(q, k, v, config=huge, implementation="triton", interpret=True)


# Whether every default config really fits is tested by compiling them natively:
# tests/test_gpu.py::test_every_default_config_compiles_and_runs.


def test_config_is_hashable_and_frozen():
  a, b = jflash.AttentionConfig(block_q=64), jflash.AttentionConfig(block_q=64)
  assert a == b and hash(a) == hash(b)
  with pytest.raises(Exception):
    a.block_q = 32


# ------------------------------------------------------------------ NaN and Inf inputs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_propagate_like_reference(implementation, where, bad):
  q, k, v, _ = random_inputs(5, 1, 40, 40, 2, 1, 16, F32)
  arrays = dict(q=q, k=k, v=v)
  arrays[where] = arrays[where].at[0, 20, 0, 3].set(bad)
  out = _call(implementation, arrays["q"], arrays["k"], arrays["v"], is_causal=True)
  ref = jax.nn.dot_product_attention(arrays["q"], arrays["k"], arrays["v"], is_causal=True)
  bad_ref, bad_out = ~np.isfinite(np.asarray(ref)), ~np.isfinite(np.asarray(out))
  if where == "v":
    # jax.nn multiplies every probability, masked zeros too, by the bad value, so every
    # query's column 3 is non-finite; jflash skips tiles a query cannot see. Queries that
    # see key 20 (causal: i >= 20, both heads of the group) must be non-finite, and
    # nothing jax.nn keeps finite may be non-finite.
    sees = np.zeros_like(bad_ref)
    sees[0, 20:, :, 3] = True
    assert np.all(bad_out[sees]) and not np.any(bad_out & ~bad_ref)
  else:
    np.testing.assert_array_equal(bad_out, bad_ref)
  np.testing.assert_array_equal(np.isnan(np.asarray(out)) & ~bad_ref, False)
  assert bad_out.any()


# -------------------------------------------------------------------- transformations


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_no_retrace_on_second_call(implementation):
  def loss(q, k, v):
    return jnp.sum(_call(implementation, q, k, v, is_causal=True) ** 2)

  # Each jitted function is traced once for its first call and never again for new data
  # of the same shapes: the static arguments jflash derives (config, mask) compare equal.
  def loss_grad(q, k, v):
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  value = jax.jit(chex.assert_max_traces(loss, n=1))
  grad = jax.jit(chex.assert_max_traces(loss_grad, n=1))
  for seed in (6, 7):
    q, k, v, _ = random_inputs(seed, 1, 24, 24, 2, 1, 16, F32)
    value(q, k, v)
    grad(q, k, v)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_deterministic_flag(implementation):
  """Both values are accepted; these backends are deterministic either way (same bits)."""
  q, k, v, do = random_inputs(13, 2, 40, 40, 4, 2, 32, BF16)

  def grads(deterministic):
    f = lambda q, k, v: jflash.attention(  # noqa: E731
        q, k, v, is_causal=True, deterministic=deterministic, implementation=implementation,
        interpret=interpret_for(implementation))
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(do)

  chex.assert_trees_all_equal(grads(True), grads(False))
  with pytest.raises(ValueError, match="deterministic must be a bool, got 'yes'"):
    jflash.attention(q, k, v, deterministic="yes", implementation="xla")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bitwise_deterministic(implementation):
  """Same inputs, same bits: rerun, separately compiled programs, and after other work.

  The backward pass has no atomics (DESIGN.md), so nothing may depend on scheduling:
  an immediate rerun of one compiled function, two functions jitted separately (two
  wrapper lambdas, so two compilations, not a cache hit), and a rerun after unrelated
  device work (other shapes through the same kernels, a matmul) must all agree bit for bit.
  """
  q, k, v, do = random_inputs(10, 2, 70, 90, 4, 2, 32, BF16)

  def run(q, k, v, do):
    out, vjp = jax.vjp(lambda *a: _call(implementation, *a, is_causal=True), q, k, v)
    return out, vjp(do)

  first, second = run(q, k, v, do), run(q, k, v, do)
  chex.assert_trees_all_equal(first, second)

  jit_a = jax.jit(lambda *a: run(*a))
  jit_b = jax.jit(lambda *a: run(*a))
  a1 = jit_a(q, k, v, do)
  b1 = jit_b(q, k, v, do)
  chex.assert_trees_all_equal(a1, b1)

  # Unrelated work on the device in between: other shapes (and tiles) through the same
  # backend, and a large matmul that evicts caches and reuses the freed buffers.
  other = random_inputs(11, 1, 130, 40, 2, 1, 64, BF16)
  jax.block_until_ready(run(*other))
  x = jax.random.normal(jax.random.PRNGKey(12), (1024, 1024))
  jax.block_until_ready(x @ x)
  chex.assert_trees_all_equal(jit_a(q, k, v, do), a1)
  chex.assert_trees_all_equal(run(q, k, v, do), first)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vmap_matches_loop(implementation):
  q, k, v, do = random_inputs(11, 3, 20, 30, 2, 1, 16, F32)
  f = lambda q, k, v: _call(implementation, q, k, v, is_causal=True)  # unbatched inside vmap
  batched = jax.vmap(f)(q, k, v)
  looped = jnp.stack([f(q[i], k[i], v[i]) for i in range(3)])
  chex.assert_trees_all_close(batched, looped, atol=1e-6)
  g_batched = jax.grad(lambda q: jnp.sum(jax.vmap(f)(q, k, v) * do))(q)
  g_direct = jax.grad(lambda q: jnp.sum(_call(implementation, q, k, v, is_causal=True) * do))(q)
  chex.assert_trees_all_close(g_batched, g_direct, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_remat_gives_same_gradients(implementation):
  q, k, v, _ = random_inputs(12, 1, 33, 33, 2, 2, 16, F32)

  def loss(q, k, v):
    return jnp.sum(jnp.tanh(_call(implementation, q, k, v, is_causal=True)))

  plain = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(q, k, v)
  chex.assert_trees_all_close(plain, remat, atol=1e-6)


# ------------------------------------------------------------------------------ memory


def _temp_bytes(implementation, t, with_grad):
  n, h = 4, 64
  q = jax.ShapeDtypeStruct((1, t, n, h), BF16)

  def fwd(q, k, v):
    return _call(implementation, q, k, v, is_causal=True)

  fn = jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v).astype(F32)), argnums=(0, 1, 2)) \
      if with_grad else fwd
  compiled = jax.jit(fn).lower(q, q, q).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("with_grad", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_xla_temp_buffers_are_linear_in_sequence_length(implementation, with_grad):
  """XLA's compiled temporary buffers grow linearly in T: no T x S array in HBM.

  What this measures: `temp_size_in_bytes` of the compiled program is every HBM buffer
  XLA allocates beyond the inputs and outputs: intermediates between the kernels
  (lse, delta, transposed statistics), and for `"xla"` every array of its loops. A
  Pallas Triton kernel allocates no HBM of its own (its scratch is registers and shared
  memory), so for `"triton"` nothing inside a kernel is missed: a T x S score matrix
  could only reach HBM as a buffer XLA sees here. On CPU the Triton kernels run in
  interpret mode, whose buffers are the interpreter's, not the GPU kernel's; the
  device's real use is measured on a GPU by tests/test_gpu.py
  (test_device_memory_is_linear_in_sequence_length).
  """
  lengths = (1024, 2048, 4096)
  temp = [_temp_bytes(implementation, t, with_grad) for t in lengths]
  # The fp32 T x T scores of all N=4 heads would be 4 * N * T^2 bytes (256 MiB at 4k).
  assert temp[-1] < 4 * 4 * lengths[-1] ** 2 / 4, temp
  # Doubling T at most doubles temporaries (plus slack for fixed-size buffers).
  assert temp[2] <= 2.2 * temp[1] + (1 << 20), temp
  assert temp[1] <= 2.2 * temp[0] + (1 << 20), temp


_Q = jnp.zeros((2, 8, 4, 16), jnp.float32)
_KV = jnp.zeros((2, 8, 2, 16), jnp.float32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(q_segment_ids=jnp.zeros((2, 7), jnp.int32)), r"q_segment_ids must be .*\(2, 8\)"),
    (dict(q_segment_ids=jnp.zeros((2, 8), jnp.float32)), r"q_segment_ids.*dtype=float32"),
    (dict(kv_segment_ids=jnp.zeros((2, 8), jnp.int32)), "kv_segment_ids needs q_segment_ids"),
    (dict(q_segment_ids=jnp.zeros((2, 8), jnp.int32),
          kv_segment_ids=jnp.zeros((2, 9), jnp.int32)), r"kv_segment_ids must be .*\(2, 8\)"),
    (dict(query_seq_lengths=jnp.zeros((3,), jnp.int32)), r"query_seq_lengths.*shape=\(3,\)"),
    (dict(key_value_seq_lengths=jnp.zeros((2,), jnp.float32)), "key_value_seq_lengths.*float32"),
    (dict(local_window_size=-1), "local_window_size.*-1"),
    (dict(local_window_size=(2, -3)), r"local_window_size.*\(2, -3\)"),
    (dict(local_window_size=(1, 2, 3)), "local_window_size"),
    (dict(local_window_size=1.5), "local_window_size"),
    (dict(logits_soft_cap=0.0), "logits_soft_cap.*0.0"),
    (dict(logits_soft_cap=-2), "logits_soft_cap"),
    (dict(logits_soft_cap=float("inf")), "logits_soft_cap"),
    (dict(alibi_slopes=jnp.zeros((3,), jnp.float32)), r"alibi_slopes.*shape=\(3,\)"),
    (dict(alibi_slopes=jnp.zeros((2, 4), jnp.int32)), "alibi_slopes.*int32"),
    (dict(q_offset=1.5), "q_offset"),
    (dict(q_offset=jnp.zeros((3,), jnp.int32)), r"q_offset.*shape=\(3,\)"),
    (dict(bias=jnp.zeros((2, 4, 8, 7))), r"bias must be broadcastable to .*\(2, 4, 8, 8\).*"
                                         r"shape=\(2, 4, 8, 7\)"),
    (dict(bias=jnp.zeros((3, 1, 1, 8))), r"bias.*shape=\(3, 1, 1, 8\)"),
    (dict(bias=jnp.zeros((1, 2, 4, 8, 8))), r"bias.*shape=\(1, 2, 4, 8, 8\)"),
    (dict(bias=jnp.zeros((8, 8), jnp.int32)), "bias must be a floating-point.*int32"),
    (dict(mask=jnp.ones((8, 8), jnp.float32)), "mask must be a boolean.*float32"),
    (dict(mask=jnp.ones((2, 3, 8, 8), bool)), r"mask must be broadcastable.*\(2, 3, 8, 8\)"),
    (dict(mask=jflash.masks.BlockLayout(np.ones((2, 2), bool), 4, 3)), r"BlockLayout.*\(2, 3\)"),
])
def test_variant_arguments_are_validated(kwargs, message):
  with pytest.raises(ValueError, match=message):
    jflash.attention(_Q, _KV, _KV, implementation="xla", **kwargs)


def test_segment_ids_alone_need_equal_lengths():
  with pytest.raises(ValueError, match="T == S.*T=8, S=5"):
    jflash.attention(_Q, _KV[:, :5], _KV[:, :5], q_segment_ids=jnp.zeros((2, 8), jnp.int32))
