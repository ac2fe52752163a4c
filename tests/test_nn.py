"""Flax layers: checkpoints of Flax's attention load and agree; attention_fn is a drop-in."""

from __future__ import annotations

import doctest
import functools
import inspect
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


def _normal(seed, shape):
  """Test inputs from numpy (no jax.random compile per shape)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


_KV_CACHE = "decoding over a KV cache is not supported"


def test_nnx_decode_paths_raise_not_implemented():
  # Regression: init_cache() used to succeed, and one token per call then ignored the cache.
  with pytest.raises(NotImplementedError, match=f"decode=True.*{_KV_CACHE}"):
    jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, decode=True, rngs=nnx.Rngs(0))
  layer = jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, decode=False,
                                       implementation=IMPLEMENTATION, rngs=nnx.Rngs(0))
  x = _normal(8, (1, 4, 32))
  with pytest.raises(NotImplementedError, match=f"init_cache.*{_KV_CACHE}"):
    layer.init_cache(x.shape)
  with pytest.raises(NotImplementedError, match=f"decode=True.*{_KV_CACHE}"):
    layer(x[:, :1], decode=True)
  with pytest.raises(NotImplementedError, match=f"decode=True.*{_KV_CACHE}"):
    nnx.view(layer, decode=True)
  layer.decode = True  # The parent's call reads the attribute when the call passes no decode.
  with pytest.raises(NotImplementedError, match=f"decode=True.*{_KV_CACHE}"):
    layer(x[:, :1])
  # As in the parent, the call's decode=False takes precedence; nnx.view(decode=False) works.
  chex.assert_shape(layer(x, decode=False), x.shape)
  assert nnx.view(layer, decode=False).decode is False


def _parameters(fn):
  return list(inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("method, extras", [
    ("__init__", {"rope_theta", "local_window_size", "logits_soft_cap", "implementation",
                  "config"}),
    ("__call__", {"positions", "q_segment_ids", "kv_segment_ids"}),
])
def test_nnx_takes_every_argument_of_multi_head_attention(method, extras):
  parent = _parameters(getattr(nnx.MultiHeadAttention, method))
  ours = _parameters(getattr(jflash.nn.FlashSelfAttention, method))
  positional = lambda params: [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
  assert positional(ours) == positional(parent)
  by_name = {p.name: p for p in ours}
  for p in parent:
    assert p.name in by_name, p.name
    assert by_name[p.name].kind == p.kind, p.name
    if p.name != "attention_fn":  # Ours defaults to jflash's (None), the parent's to Flax's.
      assert by_name[p.name].default == p.default, p.name
  assert by_name.keys() - {p.name for p in parent} == extras
  assert all(by_name[name].kind is inspect.Parameter.KEYWORD_ONLY for name in extras)


def test_nnx_cross_attention_and_accepted_arguments_match_multi_head_attention():
  kwargs = dict(num_heads=4, in_features=32, qkv_features=32, out_features=24, num_kv_heads=2,
                in_kv_features=8, dropout_rate=0.1, deterministic=True, broadcast_dropout=False,
                normalize_qk=True, keep_rngs=True, kernel_metadata={"tag": "qkv"},
                out_kernel_metadata={"tag": "out"}, query_ln_scale_metadata={"tag": "ln"})
  mha = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(0))
  ours = jflash.nn.FlashSelfAttention(**kwargs, implementation=IMPLEMENTATION, rngs=nnx.Rngs(0))
  # Same state (parameters and the kept dropout rngs) and the same variable metadata.
  chex.assert_trees_all_equal(nnx.state(ours), nnx.state(mha))
  for name in ("query", "out"):
    assert (getattr(ours, name).kernel.get_metadata()
            == getattr(mha, name).kernel.get_metadata())
  assert ours.query_ln.scale.get_metadata() == mha.query_ln.scale.get_metadata()

  oracle = nnx.MultiHeadAttention(**kwargs, decode=False, attention_fn=_oracle_attention_fn,
                                  rngs=nnx.Rngs(0))
  xq, xk, xv = _normal(9, (2, 13, 32)), _normal(10, (2, 9, 8)), _normal(11, (2, 9, 8))
  for is_causal in (False, True):  # T > S: top-left causal masking, as in the parent.
    call = lambda model: model(xq, xk, xv, mask=None, deterministic=True, rngs=nnx.Rngs(1),
                               sow_weights=False, decode=False, is_causal=is_causal,
                               out_sharding=None, qkv_sharding=None)
    expected, got, reference = call(oracle), call(ours), call(mha)
    chex.assert_equal_shape((got, reference))
    assert_within_criterion("out", max_err(got, expected), max_err(reference, expected))
  # The constructor's deterministic=True holds when the call gives none, as in the parent.
  chex.assert_trees_all_equal(ours(xq, xk, xv, is_causal=True), got)


def test_nnx_refuses_what_it_cannot_honour_naming_the_argument():
  layer = jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, dropout_rate=0.1,
                                       implementation=IMPLEMENTATION, rngs=nnx.Rngs(0))
  x = _normal(12, (1, 4, 32))
  with pytest.raises(NotImplementedError, match="mask.*pass is_causal=True"):
    layer(x, mask=jnp.ones((1, 4, 4, 4), bool), deterministic=True)
  with pytest.raises(NotImplementedError, match="sow_weights"):
    layer(x, sow_weights=True, deterministic=True)
  with pytest.raises(NotImplementedError, match="dropout_rate=0.1"):
    layer(x, deterministic=False, rngs=nnx.Rngs(1))
  with pytest.raises(NotImplementedError, match="dropout_rate=0.1"):
    nnx.view(layer, deterministic=False)(x)
  with pytest.raises(NotImplementedError, match="input_positions"):
    layer(x, deterministic=True, input_positions=jnp.arange(4))
  # Causal with fewer queries than keys: top-left alignment would be wrong for a KV cache.
  with pytest.raises(NotImplementedError, match="is_causal"):
    layer(x[:, :1], x, is_causal=True, deterministic=True)
  # dropout_rate > 0 and `deterministic` given nowhere: ValueError, as in the parent.
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, dropout_rate=0.1, decode=False,
                               rngs=nnx.Rngs(0))
  for model in (mha, layer):
    with pytest.raises(ValueError, match="deterministic"):
      model(x)

  rope = jflash.nn.FlashSelfAttention(num_heads=4, in_features=32, rope_theta=100.0,
                                      implementation=IMPLEMENTATION, rngs=nnx.Rngs(0))
  with pytest.raises(NotImplementedError, match="rope_theta.*cross-attention"):
    rope(x, x + 1.0)
  # Keys from the queries' own array are self-attention: RoPE applies as without inputs_k.
  chex.assert_trees_all_equal(rope(x, x), rope(x))


def test_attention_fn_says_kv_cache_decoding_is_unsupported():
  # Regression: under decode=True it blamed a mask the user never passed ('cannot be tiled').
  fn = functools.partial(jflash.nn.attention_fn, implementation=IMPLEMENTATION)
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=True, attention_fn=fn,
                               rngs=nnx.Rngs(0))
  mha.init_cache((1, 4, 32))
  token = jnp.ones((1, 1, 32))
  for is_causal in (False, True):  # Flax drops is_causal in decode and passes its cache mask.
    with pytest.raises(NotImplementedError, match=_KV_CACHE):
      mha(token, is_causal=is_causal)
  lin = linen.MultiHeadDotProductAttention(num_heads=4, decode=True, attention_fn=fn)
  variables = lin.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 32)))
  with pytest.raises(NotImplementedError, match=_KV_CACHE):
    lin.apply(variables, token, mutable=["cache"])
  # A KV cache without a mask: top-left causal masking would compute the wrong thing.
  q, k = jnp.ones((1, 1, 4, 8)), jnp.ones((1, 4, 4, 8))
  with pytest.raises(NotImplementedError, match=f"is_causal.*top-left.*{_KV_CACHE}"):
    jflash.nn.attention_fn(q, k, k, is_causal=True)
  # Any other dense mask: an honest message, and the way to causal masking.
  with pytest.raises(NotImplementedError, match="mask: a dense.*not supported yet.*is_causal=True"):
    jflash.nn.attention_fn(k, k, k, mask=jnp.ones((1, 4, 4, 4), bool))


@pytest.mark.parametrize("module", [jflash.nn, jflash.nn.linen, sys.modules["jflash.attention"]],
                         ids=["nn", "linen", "attention"])
def test_docstring_examples_run(module):
  extra = dict(jax=jax, jnp=jnp, nnx=nnx, jflash=jflash)
  result = doctest.testmod(module, extraglobs=extra, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0, result


def test_flash_self_attention_packing_window_soft_cap():
  """Segment ids (call), window and soft-cap (constructor) reach the kernel: the layer
  matches nnx.MultiHeadAttention with the same parameters and the oracle as attention."""
  kwargs = dict(num_heads=4, in_features=32, num_kv_heads=2)
  ids = jnp.asarray(np.repeat([0, 1, 2], [10, 20, 7])[None].repeat(2, 0), jnp.int32)
  variants = dict(local_window_size=(6, 2), logits_soft_cap=3.0)
  ours = jflash.nn.FlashSelfAttention(**kwargs, **variants, implementation=IMPLEMENTATION,
                                      rngs=nnx.Rngs(1))

  def oracle_fn(query, key, value, *args, is_causal=False, q_segment_ids=None, **kw):
    out, _ = dense_attention(query, key, value, scale=query.shape[-1] ** -0.5,
                             is_causal=is_causal, q_segment_ids=q_segment_ids, **variants)
    return out

  oracle = nnx.MultiHeadAttention(**kwargs, decode=False, attention_fn=oracle_fn,
                                  rngs=nnx.Rngs(0))
  nnx.update(ours, nnx.state(oracle, nnx.Param))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 37, 32))
  got = ours(x, is_causal=True, q_segment_ids=ids)
  want = jflash.nn.FlashSelfAttention(**kwargs, attention_fn=oracle_fn, rngs=nnx.Rngs(0))
  nnx.update(want, nnx.state(oracle, nnx.Param))
  expected = want(x, is_causal=True, q_segment_ids=ids)
  assert_within_criterion("out", max_err(got, expected), 0.0)
  # Without the ids the result differs: they were not dropped on the way.
  assert max_err(ours(x, is_causal=True), expected) > 1e-3


def test_attention_fn_forwards_variants_over_several_batch_dims():
  q = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 17, 4, 8))
  ids = jnp.asarray(np.arange(17) // 5, jnp.int32)[None, None].repeat(2, 0).repeat(3, 1)
  lengths = jnp.full((2, 3), 15, jnp.int32)
  got = jflash.nn.attention_fn(q, q, q, q_segment_ids=ids, query_seq_lengths=lengths,
                               implementation="xla")
  flat = q.reshape(6, 17, 4, 8)
  want, _ = dense_attention(flat, flat, flat, scale=8 ** -0.5, q_segment_ids=ids.reshape(6, 17),
                            query_seq_lengths=lengths.reshape(6))
  assert_within_criterion("out", max_err(got.reshape(6, 17, 4, 8), want), 0.0)
