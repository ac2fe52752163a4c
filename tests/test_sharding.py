"""Sharded inputs stay sharded: batch- and head-sharded calls run per shard.

On CPU the tests use 4 host devices (conftest sets
``XLA_FLAGS=--xla_force_host_platform_device_count=4``); on a machine with enough GPUs for
a case's mesh they use the GPUs (the Triton kernels natively), else the host devices. Each case
compares the sharded call with the unsharded one (forward and gradients) and reads the
compiled HLO for collectives.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jflash
from conftest import IMPLEMENTATIONS, ON_GPU, random_inputs

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce",
               "reduce-scatter")


def _devices(count: int):
  """`count` GPUs if this machine has them, else `count` CPU host devices."""
  gpus = jax.devices() if ON_GPU else []
  devices = gpus if len(gpus) >= count else jax.devices("cpu")
  if len(devices) < count:
    pytest.fail(f"need {count} devices, have {devices}: conftest should provide 4 host devices")
  return devices[:count]


def _mesh(shape, names):
  return Mesh(np.array(_devices(int(np.prod(shape)))).reshape(shape), names)


def _implementation_on(mesh, implementation):
  """The implementation and interpret flag that run on this mesh's devices."""
  native_gpu = mesh.devices.flat[0].platform == "gpu"
  return implementation, implementation == "triton" and not native_gpu


def _loss_and_grads(implementation, interpret, is_causal):
  def loss(q, k, v, do):
    out = jflash.attention(q, k, v, is_causal=is_causal, implementation=implementation,
                           interpret=interpret)
    return jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32))

  def fwd(q, k, v):
    return jflash.attention(q, k, v, is_causal=is_causal, implementation=implementation,
                            interpret=interpret, return_lse=True)

  return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _collectives(compiled_text: str) -> list[str]:
  return [c for c in COLLECTIVES if c in compiled_text]


# (mesh shape, axis names, q spec, kv spec, B, N, K): batch over one axis, heads over
# one axis (GQA with K divisible by the axis), both at once on a 2x2 mesh.
CASES = {
    "batch": ((2,), ("data",), P("data"), P("data"), 4, 4, 2),
    "heads": ((2,), ("model",), P(None, None, "model"), P(None, None, "model"), 1, 4, 4),
    "heads-gqa": ((2,), ("model",), P(None, None, "model"), P(None, None, "model"), 2, 8, 2),
    "batch-and-heads": ((2, 2), ("data", "model"), P("data", None, "model"),
                        P("data", None, "model"), 2, 4, 2),
}


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_sharded_call_runs_per_shard(case, implementation, is_causal):
  shape, names, q_spec, kv_spec, b, n, kv_heads = CASES[case]
  mesh = _mesh(shape, names)
  impl, interpret = _implementation_on(mesh, implementation)
  q, k, v, do = random_inputs(20, b, 40, 40, n, kv_heads, 32, jnp.float32)
  fwd, grads = _loss_and_grads(impl, interpret, is_causal)
  expected = fwd(q, k, v), grads(q, k, v, do)

  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  args = put(q, q_spec), put(k, kv_spec), put(v, kv_spec)
  sharded_do = put(do, q_spec)
  fwd_compiled = fwd.lower(*args).compile()
  grads_compiled = grads.lower(*args, sharded_do).compile()
  (out, lse), (dq, dk, dv) = fwd_compiled(*args), grads_compiled(*args, sharded_do)
  chex.assert_trees_all_close((out, lse), expected[0], atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close((dq, dk, dv), expected[1], atol=1e-5, rtol=1e-5)
  # The outputs keep the inputs' sharding.
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, q_spec), out.ndim), out.sharding
  assert dq.sharding.is_equivalent_to(NamedSharding(mesh, q_spec), dq.ndim), dq.sharding
  assert dk.sharding.is_equivalent_to(NamedSharding(mesh, kv_spec), dk.ndim), dk.sharding
  # No communication, forward or backward.
  for compiled in (fwd_compiled, grads_compiled):
    assert _collectives(compiled.as_text()) == [], (case, _collectives(compiled.as_text()))


def test_sequence_sharded_input_is_gathered():
  """A sharded T/S axis is gathered (documented): right results, an all-gather in the HLO."""
  mesh = _mesh((2,), ("seq",))
  impl, interpret = _implementation_on(mesh, "xla")
  q, k, v, do = random_inputs(21, 1, 64, 64, 2, 2, 16, jnp.float32)
  fwd, grads = _loss_and_grads(impl, interpret, True)
  spec = P(None, "seq")
  args = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
  chex.assert_trees_all_close(fwd(*args), fwd(q, k, v), atol=1e-6)
  chex.assert_trees_all_close(grads(*args, do), grads(q, k, v, do), atol=1e-5)
  assert "all-gather" in fwd.lower(*args).compile().as_text()


def test_heads_that_do_not_divide_kv_heads_are_gathered():
  """N sharded 2 ways with K = 1 (MQA): K cannot follow, so the heads are gathered."""
  mesh = _mesh((2,), ("model",))
  impl, interpret = _implementation_on(mesh, "xla")
  q, k, v, do = random_inputs(22, 1, 24, 24, 4, 1, 16, jnp.float32)
  fwd, grads = _loss_and_grads(impl, interpret, False)
  args = (jax.device_put(q, NamedSharding(mesh, P(None, None, "model"))), k, v)
  chex.assert_trees_all_close(fwd(*args), fwd(q, k, v), atol=1e-6)
  chex.assert_trees_all_close(grads(*args, do), grads(q, k, v, do), atol=1e-5)
  assert "all-gather" in fwd.lower(*args).compile().as_text()


def test_vmap_over_a_sharded_batch():
  mesh = _mesh((2,), ("data",))
  q, k, v, _ = random_inputs(23, 4, 16, 16, 2, 2, 16, jnp.float32)
  f = jax.jit(jax.vmap(lambda q, k, v: jflash.attention(q, k, v, implementation="xla")))
  args = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v)]
  chex.assert_trees_all_close(f(*args), f(q, k, v), atol=1e-6)
  assert _collectives(f.lower(*args).compile().as_text()) == []


def test_default_implementation_under_jit_stays_sharded():
  """implementation=None under jit (lax.platform_dependent picks the backend) + sharding."""
  mesh = _mesh((2,), ("data",))
  q, k, v, do = random_inputs(24, 2, 48, 48, 4, 2, 32, jnp.bfloat16)
  fwd, grads = _loss_and_grads(None, False, True)
  args = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v)]
  sharded_do = jax.device_put(do, NamedSharding(mesh, P("data")))
  fwd_compiled = fwd.lower(*args).compile()
  grads_compiled = grads.lower(*args, sharded_do).compile()
  chex.assert_trees_all_close(fwd_compiled(*args), fwd(q, k, v), atol=1e-2)
  chex.assert_trees_all_close(grads_compiled(*args, sharded_do), grads(q, k, v, do), atol=2e-2)
  for compiled in (fwd_compiled, grads_compiled):
    assert _collectives(compiled.as_text()) == []
  if mesh.devices.flat[0].platform == "gpu":  # the Triton kernels ran, per shard
    assert "jflash_fwd" in fwd_compiled.as_text()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_variants_sharded_by_batch_and_heads(implementation):
  """Bias (shared by the batch; dbias reduced across batch shards), dense mask, segment
  ids, dropout and a mask object on a 2x2 (data, model) mesh: the same values as one
  device, and the forward runs per shard with no communication."""
  mesh = _mesh((2, 2), ("data", "model"))
  impl, interpret = _implementation_on(mesh, implementation)
  b, t, n, kv_heads = 2, 40, 4, 2
  q, k, v, do = random_inputs(30, b, t, t, n, kv_heads, 32, jnp.float32)
  rng = np.random.default_rng(31)
  bias = jnp.asarray(rng.normal(size=(1, n, t, t)), jnp.float32)
  mask = jnp.asarray(rng.random((b, 1, t, t)) < 0.9)
  ids = jnp.asarray(np.repeat([[0] * 15 + [1] * 25, [0] * 30 + [1] * 10], 1, 0), jnp.int32)
  kw = dict(mask=mask, q_segment_ids=ids, dropout_rate=0.2, dropout_rng=jax.random.key(3),
            is_causal=True, implementation=impl, interpret=interpret)

  def loss(q, k, v, bias, do):
    return jnp.sum(jflash.attention(q, k, v, bias, **kw) * do)

  def loss_obj(q, k, v, do):  # a block-sparse mask object instead of the dense mask
    kw_obj = dict(kw, mask=jflash.masks.LocalWindow(8, 0) | jflash.masks.GlobalTokens(3))
    return jnp.sum(jflash.attention(q, k, v, **kw_obj) * do)

  grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  grads_obj = jax.jit(jax.value_and_grad(loss_obj, argnums=(0, 1, 2)))
  fwd = jax.jit(lambda q, k, v, bias: jflash.attention(q, k, v, bias, **kw))
  expected = grads(q, k, v, bias, do), grads_obj(q, k, v, do)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
  rows = P("data", None, "model")
  args = put(q, rows), put(k, rows), put(v, rows)
  sharded_bias, sharded_do = put(bias, P(None, "model")), put(do, rows)
  got = grads(*args, sharded_bias, sharded_do), grads_obj(*args, sharded_do)
  chex.assert_trees_all_close(got, expected, atol=1e-5, rtol=1e-5)
  assert got[0][1][3].shape == bias.shape
  compiled = fwd.lower(*args, sharded_bias).compile()
  assert _collectives(compiled.as_text()) == [], _collectives(compiled.as_text())
