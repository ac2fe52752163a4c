"""Flax layers: checkpoints of Flax's attention load and agree; attention_fn is a drop-in."""

from __future__ import annotations

import doctest
import functools
import sys

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jflash
import jflash.nn
import jflash.nn.linen
from conftest import INTERPRET, assert_within_criterion, max_err
from jflash.reference import dense_attention

IMPLEMENTATION = "triton" if not INTERPRET else "xla"


def _oracle_attention_fn(query, key, value, *args, is_causal=False, **kwargs):
  """fp32 dense attention with Flax's attention_fn signature (the test oracle)."""
  out, _ = dense_attention(query, key, value, scale=query.shape[-1] ** -0.5, is_causal=is_causal)
  return out.astype(query.dtype)


def _oracle_rope_attention_fn(query, key, value, *args, rope, is_causal=False, **kwargs):
  apply = jax.vmap(rope, in_axes=-2, out_axes=-2)
  return _oracle_attention_fn(apply(query), apply(key), value, is_causal=is_causal)


NNX_CASES = [
    dict(num_heads=4, in_features=32, qkv_features=64),
    dict(num_heads=6, in_features=48, num_kv_heads=2, out_features=40),
    dict(num_heads=4, in_features=32, num_kv_heads=1, normalize_qk=True),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("kwargs", NNX_CASES)
def test_nnx_loads_multi_head_attention_checkpoint(kwargs, is_causal, dtype):
  mha = nnx.MultiHeadAttention(**kwargs, dtype=dtype, decode=False, rngs=nnx.Rngs(0))
  ours = jflash.nn.FlashSelfAttention(**kwargs, dtype=dtype, implementation=IMPLEMENTATION,
                                      rngs=nnx.Rngs(1))
  nnx.update(ours, nnx.state(mha, nnx.Param))
  chex.assert_trees_all_equal(nnx.state(ours, nnx.Param), nnx.state(mha, nnx.Param))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 37, kwargs["in_features"]))

  oracle = nnx.MultiHeadAttention(**kwargs, dtype=jnp.float32, decode=False,
                                  attention_fn=_oracle_attention_fn, rngs=nnx.Rngs(0))
  nnx.update(oracle, nnx.state(mha, nnx.Param))
  expected = oracle(x, is_causal=is_causal)
  got, reference = ours(x, is_causal=is_causal), mha(x, is_causal=is_causal)
  chex.assert_equal_shape((got, reference))
  chex.assert_type(got, dtype)
  assert_within_criterion("out", max_err(got, expected), max_err(reference, expected))


@pytest.mark.parametrize("is_causal", [False, True])
def test_nnx_rope_matches_flax_rope(is_causal):
  kwargs = dict(num_heads=4, in_features=32, num_kv_heads=2)
  ours = jflash.nn.FlashSelfAttention(**kwargs, rope_theta=500.0, implementation=IMPLEMENTATION,
                                      rngs=nnx.Rngs(0))
  rope = nnx.RoPE(theta=500.0)
  oracle = nnx.MultiHeadAttention(
      **kwargs, decode=False, rngs=nnx.Rngs(1),
      attention_fn=functools.partial(_oracle_rope_attention_fn, rope=rope))
  nnx.update(oracle, nnx.state(ours, nnx.Param))
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 29, 32))
  chex.assert_trees_all_close(ours(x, is_causal=is_causal), oracle(x, is_causal=is_causal),
                              atol=2e-5)
  # Explicit positions 0..T-1 give the same as the default.
  chex.assert_trees_all_close(ours(x, is_causal=is_causal, positions=jnp.arange(29)),
                              ours(x, is_causal=is_causal), atol=1e-6)


def test_apply_rope_matches_flax_and_is_relative():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 10, 3, 8))
  ref = jax.vmap(nnx.RoPE(theta=100.0), in_axes=-2, out_axes=-2)(x)
  chex.assert_trees_all_close(jflash.nn.apply_rope(x, None, 100.0), ref, atol=1e-6)
  # Scores depend only on the position difference: shifting all positions changes nothing.
  q, k = x[..., :1, :], x[..., 1:2, :]
  scores = lambda shift: jnp.einsum(
      "btnh,bsnh->bts", jflash.nn.apply_rope(q, jnp.arange(10) + shift, 100.0),
      jflash.nn.apply_rope(k, jnp.arange(10) + shift, 100.0))
  chex.assert_trees_all_close(scores(0), scores(7), atol=1e-4)


def test_nnx_several_batch_dims_and_grad():
  layer = jflash.nn.FlashSelfAttention(num_heads=2, in_features=16, implementation=IMPLEMENTATION,
                                       rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 11, 16))
  y = layer(x, is_causal=True)
  flat = layer(x.reshape(6, 11, 16), is_causal=True).reshape(2, 3, 11, 16)
  chex.assert_trees_all_close(y, flat, atol=1e-6)

  mha = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False, rngs=nnx.Rngs(1))
  nnx.update(mha, nnx.state(layer, nnx.Param))
  loss = lambda model: jnp.sum(jnp.sin(model(x, is_causal=True)))
  grads = nnx.grad(loss)(layer)
  grads_ref = nnx.grad(loss)(mha)
  chex.assert_trees_all_close(nnx.state(grads, nnx.Param), nnx.state(grads_ref, nnx.Param),
                              atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_linen_loads_multi_head_dot_product_attention_params(is_causal):
  kwargs = dict(num_heads=4, qkv_features=32, out_features=24, normalize_qk=True)
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 19, 16))
  mha = linen.MultiHeadDotProductAttention(**kwargs)
  params = mha.init(jax.random.PRNGKey(0), x)
  ours = jflash.nn.linen.FlashSelfAttention(**kwargs, implementation=IMPLEMENTATION)
  chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.PRNGKey(1), x), params)
  mask = linen.make_causal_mask(jnp.ones(x.shape[:2])) if is_causal else None
  oracle = linen.MultiHeadDotProductAttention(**kwargs, attention_fn=_oracle_attention_fn)
  expected = oracle.apply(params, x, mask=mask)
  got = ours.apply(params, x, is_causal=is_causal)
  reference = mha.apply(params, x, mask=mask)
  assert_within_criterion("out", max_err(got, expected), max_err(reference, expected))


def test_linen_gqa_and_rope_shapes():
  layer = jflash.nn.linen.FlashSelfAttention(num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                                             implementation=IMPLEMENTATION)
  x = jnp.ones((2, 9, 32))
  params = layer.init(jax.random.PRNGKey(0), x)
  chex.assert_shape(params["params"]["key"]["kernel"], (32, 2, 8))
  chex.assert_shape(layer.apply(params, x, is_causal=True), (2, 9, 32))
  with pytest.raises(ValueError, match="positions are only used with rope_theta"):
    jflash.nn.linen.FlashSelfAttention(num_heads=4).apply(
        jflash.nn.linen.FlashSelfAttention(num_heads=4).init(jax.random.PRNGKey(0), x), x,
        positions=jnp.arange(9))


def test_attention_fn_is_a_drop_in_for_nnx_and_linen():
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 21, 32))
  fn = functools.partial(jflash.nn.attention_fn, implementation=IMPLEMENTATION)
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, rngs=nnx.Rngs(0))
  drop_in = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, attention_fn=fn,
                                   rngs=nnx.Rngs(0))
  chex.assert_trees_all_close(drop_in(x, is_causal=True), mha(x, is_causal=True), atol=2e-5)

  lin = linen.MultiHeadDotProductAttention(num_heads=4)
  params = lin.init(jax.random.PRNGKey(0), x)
  lin_drop_in = linen.MultiHeadDotProductAttention(num_heads=4, attention_fn=fn)
  chex.assert_trees_all_close(lin_drop_in.apply(params, x), lin.apply(params, x), atol=2e-5)


@pytest.mark.parametrize("call, message", [
    (lambda m, x: m(x, mask=jnp.ones((2, 4, 8, 8), bool)), "mask: a dense"),
    (lambda m, x: m(x, sow_weights=True), "sow_weights"),
])
def test_attention_fn_refuses_what_it_cannot_honour_nnx(call, message):
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                               attention_fn=jflash.nn.attention_fn, rngs=nnx.Rngs(0))
  with pytest.raises(NotImplementedError, match=message):
    call(mha, jnp.ones((2, 8, 16)))


def test_attention_fn_refuses_dropout_and_bias():
  q = jnp.ones((1, 8, 2, 16))
  with pytest.raises(NotImplementedError, match="dropout_rate"):
    jflash.nn.attention_fn(q, q, q, dropout_rate=0.1, deterministic=False)
  with pytest.raises(NotImplementedError, match="bias"):
    jflash.nn.attention_fn(q, q, q, bias=jnp.zeros((1, 2, 8, 8)))
  # Deterministic evaluation with a dropout rate set is honoured (no dropout to apply).
  chex.assert_shape(jflash.nn.attention_fn(q, q, q, dropout_rate=0.1, deterministic=True),
                    q.shape)
  lin = linen.MultiHeadDotProductAttention(num_heads=2, dropout_rate=0.1,
                                           attention_fn=jflash.nn.attention_fn)
  x = jnp.ones((1, 8, 16))
  params = lin.init(jax.random.PRNGKey(0), x, deterministic=True)
  with pytest.raises(NotImplementedError, match="dropout"):
    lin.apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})


def test_layer_argument_errors():
  with pytest.raises(ValueError, match="even head dim"):
    jflash.nn.FlashSelfAttention(num_heads=4, in_features=20, rope_theta=1e4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="rope_theta=-1"):
    jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, rope_theta=-1, rngs=nnx.Rngs(0))
  layer = jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features=32"):
    layer(jnp.ones((1, 4, 16)))
  with pytest.raises(ValueError, match="positions are only used with rope_theta"):
    layer(jnp.ones((1, 4, 32)), positions=jnp.arange(4))


@pytest.mark.parametrize("module", [jflash.nn, jflash.nn.linen, sys.modules["jflash.attention"]],
                         ids=["nn", "linen", "attention"])
def test_docstring_examples_run(module):
  extra = dict(jax=jax, jnp=jnp, nnx=nnx, jflash=jflash)
  result = doctest.testmod(module, extraglobs=extra, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0, result
