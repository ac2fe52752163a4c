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
import jflash.masks
import jflash.nn
import jflash.nn.functional
import jflash.nn.linen
from conftest import INTERPRET, assert_within_criterion, interpret_for, max_err
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


@pytest.mark.parametrize("kwargs", NNX_CASES + [dict(num_heads=4, in_features=32, use_bias=False)])
def test_nnx_self_attention_projects_qkv_in_one_product(kwargs, monkeypatch):
  """Self-attention computes q, k, v with one matrix multiply over the concatenated
  kernels (and biases): the same outputs and parameter gradients as three separate
  projections (nnx.MultiHeadAttention's own layer with the same, random, parameters,
  attending through the same attention_fn)."""
  ours = jflash.nn.FlashSelfAttention(**kwargs, attention_fn=_oracle_attention_fn,
                                      rngs=nnx.Rngs(1))
  mha = nnx.MultiHeadAttention(**kwargs, attention_fn=_oracle_attention_fn, decode=False,
                               rngs=nnx.Rngs(0))
  params = nnx.state(mha, nnx.Param)
  keys = iter(jax.random.split(jax.random.PRNGKey(4), len(jax.tree.leaves(params))))
  params = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), params)
  nnx.update(ours, params)
  nnx.update(mha, params)
  fused_calls = []
  project = type(ours)._project_qkv  # pylint: disable=protected-access
  monkeypatch.setattr(type(ours), "_project_qkv",
                      lambda self, x: fused_calls.append(1) or project(self, x))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 19, kwargs["in_features"]))
  cotangent = jax.random.normal(jax.random.PRNGKey(3), ours(x).shape)
  assert fused_calls  # the layer took the one-product path

  def loss_and_grads(layer):
    loss = lambda m: jnp.sum(m(x, is_causal=True) * cotangent)
    return nnx.value_and_grad(loss)(layer)

  (got, got_grads), (want, want_grads) = loss_and_grads(ours), loss_and_grads(mha)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The key bias's gradient is zero up to rounding (it shifts a query's scores by a
  # constant), so the gradients are compared to 1e-5 of the largest entry of any.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(nnx.state(want_grads)))
  chex.assert_trees_all_close(nnx.state(got_grads), nnx.state(want_grads), rtol=1e-4,
                              atol=1e-5 * scale)


def test_nnx_qkv_stay_separate_where_one_product_would_not_be_the_same():
  """A custom dot_general, head-sharded kernels (tensor parallelism: the split would
  move data between devices) or an output sharding keep the three projections."""
  layer = jflash.nn.FlashSelfAttention(4, 32, rngs=nnx.Rngs(0))
  assert layer._fusable_qkv(None)  # pylint: disable=protected-access
  assert not layer._fusable_qkv(jax.sharding.PartitionSpec())  # pylint: disable=protected-access
  custom = jflash.nn.FlashSelfAttention(4, 32, qkv_dot_general=jax.lax.dot_general,
                                        rngs=nnx.Rngs(0))
  assert not custom._fusable_qkv(None)  # pylint: disable=protected-access
  mesh = jax.make_mesh((4,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    sharded = jflash.nn.FlashSelfAttention(
        4, 32, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                 (None, "model", None)), rngs=nnx.Rngs(0))
    assert not sharded._fusable_qkv(None)  # pylint: disable=protected-access


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


def test_attention_fn_refuses_sow_weights_nnx():
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                               attention_fn=jflash.nn.attention_fn, rngs=nnx.Rngs(0))
  with pytest.raises(NotImplementedError, match="sow_weights"):
    mha(jnp.ones((2, 8, 16)), sow_weights=True)


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
                  "config", "deterministic_backward"}),
    ("__call__", {"positions", "q_segment_ids", "kv_segment_ids", "bias"}),
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
  with pytest.raises(NotImplementedError, match="sow_weights"):
    layer(x, sow_weights=True, deterministic=True)
  # Dropout with Flax's default broadcast_dropout=True (one mask for all batch and heads).
  with pytest.raises(NotImplementedError, match="broadcast_dropout=True.*broadcast_dropout=False"):
    layer(x, deterministic=False, rngs=nnx.Rngs(1))
  with pytest.raises(NotImplementedError, match="broadcast_dropout=True"):
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
  # One query against S > 1 keys with a mask (yours or a jflash.masks object) is refused too.
  for mask in (jnp.ones((1, 4, 1, 4), bool), jflash.masks.Causal()):
    with pytest.raises(NotImplementedError, match=f"mask: 1 query against 4 keys.*{_KV_CACHE}"):
      jflash.nn.attention_fn(q, k, k, mask=mask)


@pytest.mark.parametrize("module", [jflash.nn, jflash.nn.functional, jflash.nn.linen,
                                    sys.modules["jflash.attention"]],
                         ids=["nn", "functional", "linen", "attention"])
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


def _xla_fn(**kwargs):
  return functools.partial(jflash.nn.attention_fn, implementation="xla", **kwargs)


def _key_padding_mask(lengths, t, s):
  """Flax's float [B, 1, T, S] padding mask: key j of row b is valid iff j < lengths[b]."""
  valid_k = jnp.arange(s)[None] < jnp.asarray(lengths)[:, None]
  return nnx.make_attention_mask(jnp.ones((len(lengths), t)), valid_k)


def test_attention_fn_bias_and_padding_mask_match_flax_forward_and_grads():
  """Through nnx.MultiHeadAttention: the same layer with Flax's attention_fn, same params."""
  kwargs = dict(num_heads=4, in_features=32, num_kv_heads=2, decode=False)
  x = _normal(20, (2, 13, 32))
  bias = _normal(21, (1, 4, 13, 13))  # e.g. a relative-position bias, shared over the batch
  mask = _key_padding_mask([13, 9], 13, 13)
  ours = nnx.MultiHeadAttention(**kwargs, attention_fn=_xla_fn(bias=bias), rngs=nnx.Rngs(0))
  flax = nnx.MultiHeadAttention(
      **kwargs, attention_fn=functools.partial(nnx.dot_product_attention, bias=bias),
      rngs=nnx.Rngs(0))
  for is_causal in (False, True):
    loss = lambda model: jnp.sum(jnp.sin(model(x, mask=mask, is_causal=is_causal)))
    chex.assert_trees_all_close(ours(x, mask=mask, is_causal=is_causal),
                                flax(x, mask=mask, is_causal=is_causal), atol=2e-5)
    chex.assert_trees_all_close(nnx.state(nnx.grad(loss)(ours), nnx.Param),
                                nnx.state(nnx.grad(loss)(flax), nnx.Param), atol=1e-4, rtol=1e-4)


def test_attention_fn_several_batch_dims_bias_mask_and_their_grads():
  q = _normal(22, (2, 3, 11, 4, 8))
  k, v = _normal(23, (2, 3, 9, 2, 8)), _normal(24, (2, 3, 9, 2, 8))
  bias = _normal(25, (3, 1, 11, 9))  # broadcast over the first batch dim and the heads
  mask = jnp.asarray(np.random.default_rng(26).random((2, 3, 4, 11, 9)) < 0.7)
  mask = mask.at[..., 0].set(True)  # every query sees a key (see the next test)
  # Flax's own flattening needs the bias's batch dims in full: broadcast them for it.
  flax = lambda q, k, v, bias, mask: nnx.dot_product_attention(
      q, k, v, bias=jnp.broadcast_to(bias, (2, 3, 1, 11, 9)), mask=mask)
  loss = lambda fn: lambda q, k, v, b: jnp.sum(jnp.sin(fn(q, k, v, bias=b, mask=mask)))
  args = (q, k, v, bias)
  chex.assert_trees_all_close(_xla_fn()(q, k, v, bias=bias, mask=mask),
                              flax(q, k, v, bias=bias, mask=mask), atol=2e-5)
  chex.assert_trees_all_close(jax.grad(loss(_xla_fn()), argnums=(0, 1, 2, 3))(*args),
                              jax.grad(loss(flax), argnums=(0, 1, 2, 3))(*args),
                              atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match=r"bias.shape=\(2, 9\) must be broadcastable"):
    _xla_fn()(q, k, v, bias=jnp.zeros((2, 9)))
  with pytest.raises(ValueError, match=r"mask.shape=\(3, 3, 1, 11, 9\)"):
    _xla_fn()(q, k, v, mask=jnp.ones((3, 3, 1, 11, 9), bool))


def test_attention_fn_query_that_sees_no_key_gives_zero():
  """Documented difference: a query row the mask hides entirely gives 0 (Flax: mean of v)."""
  q = _normal(27, (2, 6, 2, 8))
  valid_q = jnp.arange(6)[None] < jnp.asarray([[6], [4]])
  mask = nnx.make_attention_mask(valid_q, jnp.ones((2, 6)))  # query padding
  got, flax = _xla_fn()(q, q, q, mask=mask), nnx.dot_product_attention(q, q, q, mask=mask)
  chex.assert_trees_all_close(got[1, :4], flax[1, :4], atol=2e-5)
  chex.assert_trees_all_close(got[0], flax[0], atol=2e-5)
  chex.assert_trees_all_equal(got[1, 4:], jnp.zeros_like(got[1, 4:]))
  chex.assert_trees_all_close(flax[1, 4:], jnp.broadcast_to(q[1].mean(0), (2, 2, 8)), atol=1e-5)


def _spy(monkeypatch, **extra):
  """Records the keyword arguments of every jflash.attention call (which still runs)."""
  calls, real = [], jflash.attention

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs, **extra)

  monkeypatch.setattr(jflash, "attention", spy)
  return calls


def test_make_causal_mask_runs_as_is_causal_and_under_jit_as_dense(monkeypatch):
  calls = _spy(monkeypatch)
  layer = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False,
                                 attention_fn=_xla_fn(), rngs=nnx.Rngs(0))
  x = _normal(28, (2, 13, 32))
  causal = nnx.make_causal_mask(jnp.ones((2, 13)))  # float32 [2, 1, 13, 13]
  want = layer(x, is_causal=True)
  for mask in (causal, causal.astype(bool), nnx.combine_masks(causal, causal)):
    calls.clear()
    chex.assert_trees_all_equal(layer(x, mask=mask), want)
    assert calls[-1]["is_causal"] is True and calls[-1]["mask"] is None, calls[-1]
  # Under jit the mask is a tracer: a dense mask, the same result.
  calls.clear()
  got = nnx.jit(lambda model, x, mask: model(x, mask=mask))(layer, x, causal)
  assert calls[-1]["is_causal"] is False and calls[-1]["mask"] is not None
  chex.assert_trees_all_close(got, want, atol=1e-6)
  # Not the causal triangle (one entry off, or upper triangular): a dense mask.
  for mask in (causal.at[1, 0, 5, 7].set(1.0), jnp.swapaxes(causal, -1, -2)):
    calls.clear()
    flax = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, rngs=nnx.Rngs(0))
    chex.assert_trees_all_close(layer(x, mask=mask), flax(x, mask=mask), atol=2e-5)
    assert calls[-1]["mask"] is not None and calls[-1]["is_causal"] is False


def test_attention_fn_takes_jflash_mask_objects():
  q, k = _normal(29, (2, 24, 4, 8)), _normal(30, (2, 24, 2, 8))
  masks = jflash.masks
  for mask in (masks.LocalWindow(5, 0),
               (masks.Strided(3) | masks.LocalWindow(1, 0)) & masks.Causal()):
    dense = jnp.asarray(mask(np.arange(24)[:, None], np.arange(24)[None]))
    chex.assert_trees_all_close(_xla_fn()(q, k, k, mask=mask),
                                _xla_fn()(q, k, k, mask=dense[None, None]), atol=1e-6)


def test_attention_fn_dropout_is_jflash_dropout():
  q = _normal(31, (2, 3, 16, 4, 8))
  k, v = _normal(32, (2, 3, 16, 2, 8)), _normal(33, (2, 3, 16, 2, 8))
  key = jax.random.key(7)
  drop = dict(dropout_rate=0.3, dropout_rng=key, broadcast_dropout=False)
  got = _xla_fn()(q, k, v, deterministic=False, **drop)
  flat = lambda x: x.reshape(6, *x.shape[2:])
  direct = jflash.attention(flat(q), flat(k), flat(v), dropout_rate=0.3, dropout_rng=key,
                            implementation="xla")
  chex.assert_trees_all_equal(got.reshape(direct.shape), direct)
  no_dropout = _xla_fn()(q, k, v)
  assert max_err(got, no_dropout) > 0.1
  chex.assert_trees_all_equal(_xla_fn()(q, k, v, deterministic=True, **drop), no_dropout)
  with pytest.raises(ValueError, match="dropout_rng is None.*dropout_rate=0.3"):
    _xla_fn()(q, k, v, dropout_rate=0.3, broadcast_dropout=False)
  with pytest.raises(NotImplementedError, match="broadcast_dropout=True.*independently"):
    _xla_fn()(q, k, v, dropout_rate=0.3, dropout_rng=key)
  with pytest.raises(ValueError, match="dropout_rate=1.5"):
    _xla_fn()(q, k, v, dropout_rate=1.5, deterministic=True)


def test_multi_head_attention_dropout_through_attention_fn():
  kwargs = dict(num_heads=4, in_features=32, dropout_rate=0.2, decode=False)
  x = _normal(34, (2, 16, 32))
  layer = nnx.MultiHeadAttention(**kwargs, broadcast_dropout=False, attention_fn=_xla_fn(),
                                 rngs=nnx.Rngs(0))
  train = layer(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  chex.assert_trees_all_equal(layer(x, deterministic=False, rngs=nnx.Rngs(dropout=3)), train)
  assert max_err(train, layer(x, deterministic=True)) > 1e-2
  # Flax's default broadcast_dropout=True: refused, with the fix.
  default = nnx.MultiHeadAttention(**kwargs, attention_fn=_xla_fn(), rngs=nnx.Rngs(0))
  with pytest.raises(NotImplementedError, match="construct the layer with broadcast_dropout=False"):
    default(x, deterministic=False)
  lin = linen.MultiHeadDotProductAttention(num_heads=4, dropout_rate=0.2,
                                           broadcast_dropout=False, attention_fn=_xla_fn())
  params = lin.init(jax.random.PRNGKey(0), x, deterministic=True)
  apply = lambda seed: lin.apply(params, x, deterministic=False,
                                 rngs={"dropout": jax.random.PRNGKey(seed)})
  chex.assert_trees_all_equal(apply(1), apply(1))
  assert max_err(apply(1), apply(2)) > 1e-2


def test_attention_fn_bias_mask_dropout_triton_interpret(monkeypatch):
  """The Triton kernels (interpret mode on CPU) through attention_fn agree with "xla"."""
  q, k = _normal(35, (2, 16, 2, 8)), _normal(36, (2, 16, 2, 8))
  bias, mask = _normal(37, (2, 1, 16, 16)), _key_padding_mask([16, 11], 16, 16)
  args = dict(bias=bias, mask=mask, dropout_rate=0.25, dropout_rng=jax.random.key(2),
              broadcast_dropout=False, is_causal=True)
  want = _xla_fn()(q, k, k, **args)
  _spy(monkeypatch, interpret=interpret_for("triton"))
  got = jflash.nn.attention_fn(q, k, k, **args, implementation="triton")
  chex.assert_trees_all_close(got, want, atol=1e-5)


def test_flash_self_attention_dropout():
  kwargs = dict(num_heads=4, in_features=32, num_kv_heads=2, implementation=IMPLEMENTATION)
  x = _normal(38, (2, 16, 32))
  layer = jflash.nn.FlashSelfAttention(**kwargs, dropout_rate=0.3, broadcast_dropout=False,
                                       rngs=nnx.Rngs(0))
  plain = jflash.nn.FlashSelfAttention(**kwargs, rngs=nnx.Rngs(0))
  nnx.update(plain, nnx.state(layer, nnx.Param))
  evaluation = layer(x, deterministic=True)
  chex.assert_trees_all_equal(evaluation, plain(x))
  chex.assert_trees_all_equal(nnx.view(layer, deterministic=True)(x), evaluation)
  train = layer(x, deterministic=False, rngs=nnx.Rngs(dropout=5))
  assert max_err(train, evaluation) > 1e-2
  chex.assert_trees_all_equal(layer(x, deterministic=False, rngs=nnx.Rngs(dropout=5)), train)
  # The layer's own stream (kept at construction) advances: two calls differ.
  assert max_err(layer(x, deterministic=False), layer(x, deterministic=False)) > 1e-2
  # The same keys as nnx.MultiHeadAttention with jflash's attention_fn and these params.
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, num_kv_heads=2, dropout_rate=0.3,
                               broadcast_dropout=False, decode=False,
                               attention_fn=_xla_fn(), rngs=nnx.Rngs(1))
  nnx.update(mha, nnx.state(layer, nnx.Param))
  chex.assert_trees_all_close(mha(x, deterministic=False, rngs=nnx.Rngs(dropout=5)), train,
                              atol=2e-5)
  unkept = jflash.nn.FlashSelfAttention(**kwargs, dropout_rate=0.3, broadcast_dropout=False,
                                        keep_rngs=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs a dropout key"):
    unkept(x, deterministic=False)


def test_flash_self_attention_mask_and_bias():
  kwargs = dict(num_heads=4, in_features=32, num_kv_heads=2)
  x = _normal(39, (2, 13, 32))
  bias = _normal(40, (2, 4, 13, 13))
  mask = _key_padding_mask([13, 8], 13, 13).astype(bool)
  ours = jflash.nn.FlashSelfAttention(**kwargs, implementation=IMPLEMENTATION, rngs=nnx.Rngs(0))
  flax = nnx.MultiHeadAttention(
      **kwargs, decode=False, rngs=nnx.Rngs(1),
      attention_fn=functools.partial(nnx.dot_product_attention, bias=bias))
  nnx.update(flax, nnx.state(ours, nnx.Param))
  chex.assert_trees_all_close(ours(x, mask=mask, bias=bias, is_causal=True),
                              flax(x, mask=mask, is_causal=True), atol=2e-5)
  window = jflash.masks.LocalWindow(3, 0)
  dense = jnp.asarray(window(np.arange(13)[:, None], np.arange(13)[None]))
  chex.assert_trees_all_close(ours(x, mask=window), ours(x, mask=dense), atol=1e-6)
  # A custom attention_fn that takes no mask or bias gets them anyway: never dropped.
  blind = jflash.nn.FlashSelfAttention(**kwargs, attention_fn=lambda q, k, v, is_causal: q,
                                       rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="bias"):
    blind(x, bias=bias)


def test_linen_dropout_mask_bias():
  kwargs = dict(num_heads=4, num_kv_heads=2, implementation=IMPLEMENTATION)
  x = _normal(41, (2, 16, 32))
  layer = jflash.nn.linen.FlashSelfAttention(**kwargs, dropout_rate=0.3)
  params = layer.init(jax.random.PRNGKey(0), x, deterministic=True)
  evaluation = layer.apply(params, x, deterministic=True)
  chex.assert_trees_all_equal(evaluation,
                              jflash.nn.linen.FlashSelfAttention(**kwargs).apply(params, x))
  train = lambda seed: layer.apply(params, x, deterministic=False,
                                   rngs={"dropout": jax.random.PRNGKey(seed)})
  chex.assert_trees_all_equal(train(1), train(1))
  assert max_err(train(1), evaluation) > 1e-2 and max_err(train(1), train(2)) > 1e-2
  # A key given in the call is used as is (no rngs needed), as in linen's attention.
  keyed = lambda: layer.apply(params, x, deterministic=False, dropout_rng=jax.random.key(1))
  chex.assert_trees_all_equal(keyed(), keyed())
  assert max_err(keyed(), evaluation) > 1e-2
  with pytest.raises(ValueError, match="deterministic"):
    layer.apply(params, x)
  # mask and bias: as linen.MultiHeadDotProductAttention with the same params.
  bias = _normal(42, (1, 4, 16, 16))
  mask = _key_padding_mask([16, 10], 16, 16)
  flax = linen.MultiHeadDotProductAttention(
      num_heads=4, attention_fn=functools.partial(linen.dot_product_attention, bias=bias))
  plain = jflash.nn.linen.FlashSelfAttention(num_heads=4, implementation=IMPLEMENTATION)
  params = flax.init(jax.random.PRNGKey(1), x)
  chex.assert_trees_all_close(plain.apply(params, x, mask=mask, bias=bias),
                              flax.apply(params, x, mask=mask), atol=2e-5)


@pytest.mark.parametrize("flag", [True, False])
def test_deterministic_backward_reaches_the_kernel_call(flag, monkeypatch):
  """`deterministic_backward` of the layers and of attention_fn becomes jflash.attention's
  `deterministic` (the layers' own `deterministic` stays about dropout)."""
  calls = _spy(monkeypatch)
  x = _normal(29, (2, 16, 32))
  layer = jflash.nn.FlashSelfAttention(4, 32, implementation="xla", deterministic=True,
                                       deterministic_backward=flag, rngs=nnx.Rngs(0))
  layer(x, is_causal=True)
  linen_layer = jflash.nn.linen.FlashSelfAttention(num_heads=4, implementation="xla",
                                                   deterministic_backward=flag)
  linen_layer.apply(linen_layer.init(jax.random.PRNGKey(0), x), x, is_causal=True)
  jflash.nn.attention_fn(x.reshape(2, 16, 4, 8), x.reshape(2, 16, 4, 8),
                         x.reshape(2, 16, 4, 8), implementation="xla",
                         deterministic_backward=flag)
  # nnx, linen's init and apply, attention_fn
  assert [call["deterministic"] for call in calls] == [flag] * 4, calls
