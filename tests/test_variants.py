"""Attention variants (packing, windows, offsets, lengths, dense masks, bias, soft-cap,
ALiBi), alone and combined, in every backend, forward and backward, against the dense fp32 oracle.

Criterion (DESIGN.md): the max-abs error against the fp32 oracle is at most 2x that of
the same dense math computed in the input dtype (`dense_attention(dtype=...)`, which
rounds where jax.nn does; jax.nn lacks most of these variants), plus 1e-5. In float32
the comparator is the oracle itself, so the bound is 1e-5. Sizes are odd on purpose and
the tiles small (16), so every run of the tile schedule is exercised.

16-bit gradients are held as in test_numerics.py (BUILD_NOTES "Numerics tests"): first
within 2x the error of FlashAttention-2's own arithmetic, emulated densely from jflash's
residuals (`_fa2_gradients`; beyond it is a kernel bug, `ArithmeticExcess`), then within
the criterion; where FA-2's arithmetic (delta from the 16-bit O, 16-bit dS) itself
misses the criterion, the case is a known `CriterionGap`, marked xfail (strict).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jflash
from jflash.reference import dense_attention

from conftest import HOPPER, IMPLEMENTATIONS, assert_within_criterion, interpret_for, max_err
from dropout_numpy import head_seeds_np, keep_np
from test_numerics import ArithmeticExcess, CriterionGap

B, N, K, H = 2, 4, 2, 20
SMALL_TILES = {"triton": jflash.TritonConfig(block_q=16, block_kv=16, block_q_dkv=16,
                                             block_kv_dkv=16, block_q_dq=16, block_kv_dq=16),
               "xla": jflash.XlaConfig(block_q=16, block_kv=16),
               "mosaic_gpu": None}  # its tiles are 64 rows or more (wgmma)
# On a Hopper GPU the Mosaic GPU backend runs the 16-bit cases natively (test_mosaic_gpu.py
# runs it in interpret mode on a CPU); these it must refuse, naming triton.
MOSAIC_REFUSES = {"alibi", "dense_mask", "bias_softcap", "mask_bias_causal",
                  "mask_object_window", "mask_object_packing_softcap", "dropout_mask",
                  "dropout_packing_window", "everything"}


def _documents(rng, length, sizes):
  """Sorted segment ids: documents of the given sizes, then one filling the rest."""
  ids = np.repeat(np.arange(len(sizes)), sizes)[:length]
  return np.concatenate([ids, np.full(length - len(ids), len(sizes))]).astype(np.int32)


def _case(name, rng):
  """(T, S, kwargs) of a named variant; arrays are numpy (the oracle takes them too)."""
  packed = np.stack([_documents(rng, 53, [20, 9, 17]), _documents(rng, 53, [3, 40])])
  if name == "segment_ids":  # packing: keys use the queries' ids
    return 53, 53, dict(q_segment_ids=packed)
  if name == "segment_ids_cross":  # T != S, ids not sorted
    return 37, 53, dict(q_segment_ids=rng.integers(0, 3, (B, 37)).astype(np.int32),
                        kv_segment_ids=rng.integers(0, 3, (B, 53)).astype(np.int32))
  if name == "window_two_sided":
    return 53, 53, dict(local_window_size=(5, 3))
  if name == "window_causal":
    return 53, 53, dict(local_window_size=(7, None), is_causal=True)
  if name == "bottom_right_causal":  # a chunk of queries at the end of the keys
    return 21, 53, dict(is_causal=True, q_offset=32)
  if name == "offset_array_window":
    return 37, 53, dict(is_causal=True, local_window_size=9, q_offset=np.array([16, -4], np.int32))
  if name == "lengths":
    return 37, 53, dict(query_seq_lengths=np.array([30, 37], np.int32),
                        key_value_seq_lengths=np.array([53, 21], np.int32))
  if name == "soft_cap":
    return 37, 53, dict(logits_soft_cap=2.0)
  if name == "alibi":
    return 53, 53, dict(is_causal=True, alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625],
                                                             np.float32))
  if name == "packing_window_softcap_causal":  # with GQA (N=4, K=2)
    return 53, 53, dict(q_segment_ids=packed, local_window_size=(11, 0), is_causal=True,
                        logits_soft_cap=3.0)
  if name == "lengths_offset_window":
    return 37, 53, dict(query_seq_lengths=np.array([29, 37], np.int32),
                        key_value_seq_lengths=np.array([50, 40], np.int32),
                        q_offset=np.array([16, 3], np.int32), local_window_size=(13, 2))
  if name == "dense_mask":  # per batch and head; whole tiles False, whole tiles True
    mask = rng.random((B, N, 37, 53)) < 0.6
    mask[:, :, :16, 16:32], mask[:, :, 16:32, :16] = False, True
    mask[0, 1, 5] = False  # a row that sees no key
    return 37, 53, dict(mask=mask)
  if name == "bias_softcap":  # a bias shared by the batch, broadcast over T
    return 37, 53, dict(bias=rng.normal(size=(N, 1, 53)).astype(np.float32) * 2,
                        logits_soft_cap=3.0)
  if name == "mask_bias_causal":  # GQA; the mask broadcast over heads, bias per batch
    return 53, 53, dict(mask=rng.random((B, 1, 53, 53)) < 0.8, is_causal=True,
                        bias=rng.normal(size=(B, 1, 53, 53)).astype(np.float32))
  if name == "mask_object_window":  # static block-sparse: trace-time tile lists
    return 53, 53, dict(mask=jflash.masks.Causal() & jflash.masks.LocalWindow(9, 0))
  if name == "mask_object_packing_softcap":  # a mask object with runtime ids, GQA
    strided = (jflash.masks.Strided(5) | jflash.masks.LocalWindow(3, 0)) & jflash.masks.Causal()
    return 53, 53, dict(mask=strided | jflash.masks.GlobalTokens(2), q_segment_ids=packed,
                        logits_soft_cap=3.0)
  if name == "dropout_mask":  # dropout + a dense mask (+ causal), GQA
    return 37, 53, dict(dropout_rate=0.25, dropout_rng=jax.random.key(7), is_causal=True,
                        q_offset=16, mask=rng.random((B, 1, 37, 53)) < 0.85)
  if name == "dropout_packing_window":
    return 53, 53, dict(dropout_rate=0.5, dropout_rng=jax.random.key(8), q_segment_ids=packed,
                        local_window_size=(9, 2), logits_soft_cap=5.0)
  if name == "everything":
    return 53, 53, dict(q_segment_ids=packed, local_window_size=(15, 4), is_causal=True,
                        logits_soft_cap=5.0, query_seq_lengths=np.array([53, 40], np.int32),
                        q_offset=np.array([0, 2], np.int32),
                        alibi_slopes=np.array([[0.5, 0.1, 0.0, 1.0], [0.2, 0.2, 0.3, 0.4]],
                                              np.float32))
  raise ValueError(name)


CASES = ["segment_ids", "segment_ids_cross", "window_two_sided", "window_causal",
         "bottom_right_causal", "offset_array_window", "lengths", "soft_cap", "alibi",
         "packing_window_softcap_causal", "lengths_offset_window", "dense_mask", "bias_softcap",
         "mask_bias_causal", "mask_object_window", "mask_object_packing_softcap", "dropout_mask",
         "dropout_packing_window", "everything"]


def _inputs(seed, t, s, dtype):
  rng = np.random.default_rng(seed)
  q, do = (rng.normal(size=(B, t, N, H)) for _ in range(2))
  k, v = (rng.normal(size=(B, s, K, H)) for _ in range(2))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v, do))


def _jflash(q, k, v, do, kw, implementation, config):
  fn = jax.jit(lambda q, k, v: jflash.attention(
      q, k, v, implementation=implementation, interpret=interpret_for(implementation),
      return_lse=True, config=config, **kw))
  (out, lse), vjp = jax.vjp(fn, q, k, v)
  return out, lse, vjp((do, jnp.zeros_like(lse)))


def _oracle_kw(kw, t, s):
  """The oracle's arguments: a mask object becomes the dense mask it defines (its
  elementwise definition is checked against index loops in test_sparsity.py); a dropout
  key becomes the keep mask of the independent NumPy hash (tests/dropout_numpy.py)."""
  if isinstance(kw.get("mask"), jflash.masks.Mask):
    kw = dict(kw, mask=kw["mask"](np.arange(t)[:, None], np.arange(s)[None, :]))
  if kw.get("dropout_rng") is not None:
    kw = dict(kw)
    key = np.asarray(jax.random.key_data(kw.pop("dropout_rng")))
    kw["dropout_keep"] = keep_np(head_seeds_np(key, B, N), t, s, kw["dropout_rate"])
  return kw


def _dense(q, k, v, do, kw, dtype):
  kw = _oracle_kw(kw, q.shape[1], k.shape[1])
  fn = functools.partial(dense_attention, scale=H ** -0.5, dtype=dtype, **kw)
  (out, lse), vjp = jax.vjp(fn, *(x.astype(dtype) for x in (q, k, v)))
  return out, lse, vjp((do.astype(dtype), jnp.zeros_like(lse)))


def _visible_np(t, s, kw):
  """[B, 1, T, S] visibility straight from the definitions (NumPy)."""
  kw = _oracle_kw(kw, t, s)
  i, j = np.arange(t)[None, :, None], np.arange(s)[None, None, :]
  offset = np.broadcast_to(np.asarray(kw.get("q_offset", 0)), (B,))[:, None, None]
  vis = np.ones((B, t, s), bool)
  if kw.get("is_causal"):
    vis &= j <= i + offset
  window = kw.get("local_window_size")
  if window is not None:
    left, right = (window, window) if isinstance(window, int) else window
    if left is not None:
      vis &= j >= i + offset - left
    if right is not None:
      vis &= j <= i + offset + right
  if "query_seq_lengths" in kw:
    vis &= i < kw["query_seq_lengths"][:, None, None]
  if "key_value_seq_lengths" in kw:
    vis &= j < kw["key_value_seq_lengths"][:, None, None]
  if "q_segment_ids" in kw:
    kv_ids = kw.get("kv_segment_ids", kw["q_segment_ids"])
    vis &= kw["q_segment_ids"][:, :, None] == kv_ids[:, None, :]
  vis = vis[:, None]
  if "mask" in kw:
    vis = vis & kw["mask"]
  return vis, (i + offset - j)[:, None]


def _fa2_gradients(q, k, v, do, out, lse, kw):
  """FlashAttention-2's backward arithmetic, dense, from jflash's residuals (out, lse):
  P = exp(z - lse), delta = rowsum(dO * out) from the 16-bit out, dS = P (dP - delta)
  dz/ds rounded to the input dtype, P rounded for dV. NumPy float32."""
  dtype = q.dtype
  okw = _oracle_kw(kw, q.shape[1], k.shape[1])
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  q, k, v, do, out = (f32(x) for x in (q, k, v, do, out))
  kr, vr = (np.repeat(x, N // K, axis=2) for x in (k, v))
  s = np.einsum("btnh,bsnh->bnts", q, kr) * np.float32(H ** -0.5)
  if "bias" in kw:
    s = s + np.asarray(kw["bias"], np.float32)
  z, dz = s, np.ones_like(s)
  if kw.get("logits_soft_cap"):
    cap = np.float32(kw["logits_soft_cap"])
    tanh = np.tanh(s / cap)
    z, dz = cap * tanh, 1 - tanh * tanh
  vis, distance = _visible_np(q.shape[1], k.shape[1], kw)
  if "alibi_slopes" in kw:
    slopes = np.broadcast_to(kw["alibi_slopes"], (B, N))[:, :, None, None]
    z = z - slopes * np.abs(distance).astype(np.float32)
  lse = np.moveaxis(np.where(f32(lse) == -np.inf, np.inf, f32(lse)), 1, 2)[..., None]
  p = np.where(vis, np.exp(z - lse), 0).astype(np.float32)
  delta = np.moveaxis(np.sum(do * out, -1), 1, 2)[..., None]
  dp = np.einsum("btnh,bsnh->bnts", do, vr)
  p_v = p
  if "dropout_keep" in okw:  # dropped, rescaled P for dV and dP
    r = np.float32(1 / (1 - okw["dropout_rate"]))
    p_v, dp = np.where(okw["dropout_keep"], p * r, 0), np.where(okw["dropout_keep"], dp * r, 0)
  ds = np.asarray(jnp.asarray(p * (dp - delta) * dz).astype(dtype), np.float32)
  p16 = np.asarray(jnp.asarray(p_v).astype(dtype), np.float32)
  scale = np.float32(H ** -0.5)
  per_kv = lambda x: x.reshape(*x.shape[:2], K, N // K, H).sum(3)  # noqa: E731
  return (scale * np.einsum("bnts,bsnh->btnh", ds, kr),
          per_kv(scale * np.einsum("bnts,btnh->bsnh", ds, q)),
          per_kv(np.einsum("bnts,btnh->bsnh", p16, do)))


# Where FA-2's arithmetic misses the 2x-comparator criterion on these inputs (CPU, where
# both backends round alike); the cause is BUILD_NOTES' "16-bit gradients" note.
GAP_NAMES = ("window_causal", "mask_object_window")
KNOWN_GAPS = {(name, "bfloat16", impl) for impl in IMPLEMENTATIONS for name in GAP_NAMES}


def _params():
  for name in CASES:
    for dtype in ("float32", "bfloat16"):
      for impl in IMPLEMENTATIONS:
        marks = []
        if (name, dtype, impl) in KNOWN_GAPS:
          marks = [pytest.mark.xfail(raises=CriterionGap, strict=not jax.default_backend() == "gpu",
                                     reason="FA-2 arithmetic gap (16-bit delta/dS)")]
        yield pytest.param(name, dtype, impl, marks=marks, id=f"{name}-{dtype}-{impl}")
    if HOPPER:
      marks = [pytest.mark.xfail(raises=CriterionGap, strict=False, reason="FA-2 arithmetic "
                                 "gap (16-bit delta/dS)")] if name in GAP_NAMES else []
      yield pytest.param(name, "bfloat16", "mosaic_gpu", marks=marks,
                         id=f"{name}-bfloat16-mosaic_gpu")


@pytest.mark.parametrize("name,dtype,implementation", list(_params()))
def test_variant_against_oracle(name, dtype, implementation):
  dtype = jnp.dtype(dtype)
  t, s, kw = _case(name, np.random.default_rng(1))
  q, k, v, do = _inputs(2, t, s, dtype)
  if implementation == "mosaic_gpu" and name in MOSAIC_REFUSES:
    with pytest.raises(NotImplementedError, match="implementation='triton'"):
      _jflash(q, k, v, do, kw, implementation, None)
    return
  out, lse, grads = _jflash(q, k, v, do, kw, implementation, SMALL_TILES[implementation])
  ref_out, ref_lse, ref_grads = _dense(q, k, v, do, kw, jnp.float32)
  if dtype == jnp.float32:
    cmp_out, cmp_grads = ref_out, ref_grads
  else:
    cmp_out, _, cmp_grads = _dense(q, k, v, do, kw, dtype)
  assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
  # Rows that see no key: out 0 and lse -inf, exactly as the oracle.
  empty = ref_lse == -jnp.inf
  np.testing.assert_array_equal(lse == -jnp.inf, empty)
  assert max_err(jnp.where(empty, 0.0, lse), jnp.where(empty, 0.0, ref_lse)) <= 1e-4
  assert bool(jnp.all(jnp.isfinite(out))), "out has NaN or inf"
  assert_within_criterion(f"{name} out", max_err(out, ref_out), max_err(cmp_out, ref_out))
  fa2 = _fa2_gradients(q, k, v, do, out, lse, kw) if dtype != jnp.float32 else cmp_grads
  gaps = []
  for label, got, ref, cmp, emulated in zip(("dq", "dk", "dv"), grads, ref_grads, cmp_grads,
                                            fa2):
    assert bool(jnp.all(jnp.isfinite(got))), f"{label} has NaN or inf"
    err, err_cmp, err_fa2 = (max_err(x, ref) for x in (got, cmp, jnp.asarray(emulated)))
    if err > 2 * max(err_cmp, err_fa2) + 1e-5:
      raise ArithmeticExcess(f"{name} {label}: {err:.3g} > 2 x max(comparator {err_cmp:.3g}, "
                             f"FA-2 arithmetic {err_fa2:.3g}) + 1e-5")
    if err > 2 * err_cmp + 1e-5:
      gaps.append(f"{label}: {err:.3g} > 2 x {err_cmp:.3g} + 1e-5 (FA-2 arithmetic "
                  f"{err_fa2:.3g})")
  if gaps:
    raise CriterionGap(f"{name}: " + "; ".join(gaps))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_default_tiles_with_packing(implementation):
  """The default (large) tiles, where a tile holds several documents."""
  rng = np.random.default_rng(3)
  t = 300
  ids = np.stack([_documents(rng, t, [100, 7, 64, 1, 90]), _documents(rng, t, [t])])
  kw = dict(q_segment_ids=ids, is_causal=True)
  q, k, v, do = _inputs(4, t, t, jnp.float32)
  out, lse, grads = _jflash(q, k, v, do, kw, implementation, None)
  ref_out, _, ref_grads = _dense(q, k, v, do, kw, jnp.float32)
  for label, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
    assert_within_criterion(label, max_err(got, ref), 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("how", ["lengths_zero", "window_past_keys", "empty_segment",
                                 "causal_negative_offset"])
def test_rows_that_see_no_key(how, implementation):
  """Output 0, lse -inf, every gradient 0 on those rows, never NaN (with an lse cotangent)."""
  t, s = 19, 23
  kw = {
      "lengths_zero": dict(key_value_seq_lengths=np.array([0, 23], np.int32), is_causal=True),
      "window_past_keys": dict(local_window_size=(2, 2), q_offset=10),
      "empty_segment": dict(
          q_segment_ids=np.concatenate([np.ones((B, 5)), np.full((B, 14), 2)], 1).astype(np.int32),
          kv_segment_ids=np.full((B, s), 2, np.int32)),
      "causal_negative_offset": dict(is_causal=True, q_offset=-7, logits_soft_cap=4.0),
  }[how]
  q, k, v, do = _inputs(5, t, s, jnp.float32)
  fn = jax.jit(lambda q, k, v: jflash.attention(
      q, k, v, implementation=implementation, interpret=interpret_for(implementation),
      return_lse=True, config=SMALL_TILES[implementation], **kw))
  (out, lse), vjp = jax.vjp(fn, q, k, v)
  ref_out, ref_lse = dense_attention(q, k, v, scale=H ** -0.5, **kw)
  empty = ref_lse == -jnp.inf
  assert bool(jnp.any(empty)), "the case must have rows that see no key"
  np.testing.assert_array_equal(lse == -jnp.inf, empty)
  np.testing.assert_array_equal(jnp.where(empty[..., None], out, 0.0), 0.0)
  d_lse = jnp.where(empty, 0.0, 1.0) + jnp.where(empty, 3.0, 0.0)  # nonzero on empty rows too
  dq, dk, dv = vjp((do, d_lse))
  for g in (dq, dk, dv):
    assert bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_array_equal(jnp.where(empty[..., None], dq, 0.0), 0.0)
  ref = jax.vjp(lambda q, k, v: dense_attention(q, k, v, scale=H ** -0.5, **kw), q, k, v)[1](
      (do, jnp.where(empty, 0.0, d_lse)))
  for label, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
    assert_within_criterion(label, max_err(got, want), 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_traced_offset_and_lengths_do_not_recompile(implementation):
  t, s = 17, 40
  q, k, v, _ = _inputs(6, t, s, jnp.float32)
  traces = []

  @jax.jit
  def f(q, k, v, offset, lengths):
    traces.append(1)
    return jflash.attention(q, k, v, is_causal=True, q_offset=offset,
                            key_value_seq_lengths=lengths, implementation=implementation,
                            interpret=interpret_for(implementation))

  for offset, length in ((0, 40), (23, 31), (5, 12)):
    offsets, lengths = jnp.full((B,), offset, jnp.int32), jnp.full((B,), length, jnp.int32)
    out = f(q, k, v, offsets, lengths)
    ref, _ = dense_attention(q, k, v, scale=H ** -0.5, is_causal=True, q_offset=offsets,
                             key_value_seq_lengths=lengths)
    assert_within_criterion(f"offset {offset}", max_err(out, ref), 0.0)
  assert len(traces) == 1


def test_backends_agree_bitwise_shape_and_unbatched_calls():
  """Unbatched inputs take unbatched operands ([T] ids, scalar lengths, [N] slopes)."""
  t = 33
  q, k, v, _ = _inputs(7, t, t, jnp.float32)
  ids = _documents(np.random.default_rng(0), t, [10, 12])
  kw = dict(q_segment_ids=ids, query_seq_lengths=np.int32(30), q_offset=np.int32(2),
            alibi_slopes=np.full((N,), 0.3, np.float32), is_causal=True)
  out = jflash.attention(q[0], k[0], v[0], implementation="xla", **kw)
  batched = jflash.attention(q[:1], k[:1], v[:1], implementation="xla",
                             q_segment_ids=ids[None], query_seq_lengths=np.array([30], np.int32),
                             q_offset=np.array([2], np.int32),
                             alibi_slopes=np.full((N,), 0.3, np.float32), is_causal=True)
  np.testing.assert_array_equal(out, batched[0])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("bias_shape", [(37, 53), (B, 1, 1, 53), (N, 37, 53), (B, N, 37, 53)])
def test_bias_gradient(bias_shape, implementation):
  """dL/dbias against the oracle's, for biases broadcast over batch, heads or rows."""
  t, s = 37, 53
  rng = np.random.default_rng(8)
  q, k, v, do = _inputs(9, t, s, jnp.float32)
  bias = jnp.asarray(rng.normal(size=bias_shape), jnp.float32)
  kw = dict(is_causal=True, logits_soft_cap=4.0, mask=rng.random((B, 1, t, s)) < 0.9)
  fn = jax.jit(lambda q, k, v, bias: jflash.attention(
      q, k, v, bias, implementation=implementation, interpret=interpret_for(implementation),
      config=SMALL_TILES[implementation], **kw))
  out, vjp = jax.vjp(fn, q, k, v, bias)
  ref_out, ref_vjp = jax.vjp(
      lambda q, k, v, bias: dense_attention(q, k, v, bias=bias, scale=H ** -0.5, **kw)[0],
      q, k, v, bias)
  assert_within_criterion("out", max_err(out, ref_out), 0.0)
  for label, got, want in zip(("dq", "dk", "dv", "dbias"), vjp(do), ref_vjp(do)):
    assert got.shape == want.shape, label
    assert_within_criterion(label, max_err(got, want), 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bias_gradient_only_when_differentiated(implementation):
  """Without a bias cotangent no [B, N, T, S] dbias array is built (it costs 4BNTS bytes)."""
  t, s = 37, 53
  q, k, v, _ = _inputs(10, t, s, jnp.float32)
  bias = jnp.ones((N, t, s), jnp.float32)  # shared by the batch: [B, N, T, S] is dbias only

  def loss(q, k, v, bias):
    return jflash.attention(q, k, v, bias, implementation=implementation,
                            interpret=interpret_for(implementation)).sum()

  dbias = f"f32[{B},{N},{t},{s}]"
  assert dbias not in str(jax.make_jaxpr(jax.grad(loss, argnums=0))(q, k, v, bias))
  assert dbias in str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 3)))(q, k, v, bias))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vmap_over_a_shared_bias_and_mask(implementation):
  """vmap with a bias and mask of batch 1 (broadcast inside the rule) and their gradient."""
  t, s = 21, 30
  rng = np.random.default_rng(11)
  q, k, v, do = _inputs(12, t, s, jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, N, t, s)), jnp.float32)
  mask = jnp.asarray(rng.random((1, 1, t, s)) < 0.7)

  def f(q, k, v, bias):
    return jflash.attention(q[None], k[None], v[None], bias, mask,
                            implementation=implementation,
                            interpret=interpret_for(implementation),
                            config=SMALL_TILES[implementation])[0]

  def ref(q, k, v, bias):
    return dense_attention(q[None], k[None], v[None], bias=bias, mask=mask,
                           scale=H ** -0.5)[0][0]

  got = jax.vmap(jax.value_and_grad(lambda *a: jnp.sum(f(*a) * do[0]), argnums=(0, 3)),
                 in_axes=(0, 0, 0, None))(q, k, v, bias)
  want = jax.vmap(jax.value_and_grad(lambda *a: jnp.sum(ref(*a) * do[0]), argnums=(0, 3)),
                  in_axes=(0, 0, 0, None))(q, k, v, bias)
  for got_x, want_x in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert got_x.shape == want_x.shape
    assert_within_criterion("vmap", max_err(got_x, want_x), 0.0)
