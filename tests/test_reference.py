"""The dense oracle itself: against jax.nn where jax.nn has the variant, else NumPy.

jax.nn.dot_product_attention(implementation="xla") covers bias, mask, causal, local
windows (both sides, relative to i = j) and sequence lengths; the rest (segment ids,
q_offset, soft-cap, ALiBi, dropout) is checked against a brute-force float64 loop over
(b, n, i, j) written here independently of the oracle.

What jax.nn returns on a row that sees no key (checked in
test_jax_nn_empty_row_semantics): a query-padding row (i >= query_seq_lengths[b]) gives
out = 0 (jax.nn multiplies the output by the query mask); any other empty row (all keys
masked, key_value_seq_lengths[b] = 0, a window outside the keys) gives out = the mean of
v over all S keys, since every logit is the same large negative number. Its lse residual
is then finite: -0.7 * float32 max + log(S), about -2.38e38. The oracle gives out = 0,
lse = -inf on all of them, so jax.nn is compared on rows that see a key only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jflash.reference import dense_attention

B, T, S, N, K, H = 2, 17, 23, 4, 2, 20  # odd sizes, GQA 2
SCALE = H ** -0.5
QLEN = np.array([17, 9], np.int32)
KVLEN = np.array([14, 23], np.int32)


def _inputs(seed, b=B, t=T, s=S, n=N, kv_heads=K, h=H, dtype=jnp.float32):
  """q, k, v (in `dtype`), bias [B,N,T,S], mask [B,N,T,S], d out; NumPy's RNG (jax.random
  compiles per shape, which made this file several times slower)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  q, k, v = normal(b, t, n, h), normal(b, s, kv_heads, h), normal(b, s, kv_heads, h)
  q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
  mask = jnp.asarray(rng.random((b, n, t, s)) < 0.7)
  return q, k, v, jnp.asarray(normal(b, n, t, s)), mask, jnp.asarray(normal(b, t, n, h))


# ------------------------------------------------------------------ against jax.nn

# Each case: (oracle kwargs, bias shape or None, mask shape or None). jax.nn's
# arguments are the same, bar its positional bias/mask.
JAX_NN_CASES = {
    "plain": ({}, None, None),
    "causal": (dict(is_causal=True), None, None),
    "qlen": (dict(query_seq_lengths=QLEN), None, None),
    "kvlen": (dict(key_value_seq_lengths=KVLEN), None, None),
    "lens-causal": (dict(query_seq_lengths=QLEN, key_value_seq_lengths=KVLEN,
                         is_causal=True), None, None),
    "window-int": (dict(local_window_size=3), None, None),
    "window-tuple": (dict(local_window_size=(2, 5)), None, None),
    "window-causal": (dict(local_window_size=(4, 0), is_causal=True), None, None),
    "window-int-causal": (dict(local_window_size=3, is_causal=True), None, None),
    "window-right": (dict(local_window_size=(0, 3)), None, None),
    "bias": ({}, (B, N, T, S), None),
    "bias-heads": (dict(is_causal=True), (1, N, T, S), None),
    "bias-batch": ({}, (B, 1, T, S), None),
    "mask": ({}, None, (B, N, T, S)),
    "mask-batch": (dict(is_causal=True), None, (B, 1, T, S)),
    "all": (dict(is_causal=True, local_window_size=(6, 2), query_seq_lengths=QLEN,
                 key_value_seq_lengths=KVLEN), (B, N, T, S), (B, N, T, S)),
}


def _jax_nn(q, k, v, bias, mask, kw):
  return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=SCALE, implementation="xla",
                                      return_residual=True, **kw)


@pytest.mark.parametrize("name", JAX_NN_CASES)
def test_matches_jax_nn(name):
  kw, bias_shape, mask_shape = JAX_NN_CASES[name]
  q, k, v, bias, mask, do = _inputs(0)
  bias = None if bias_shape is None else bias[tuple(slice(0, d) for d in bias_shape)]
  mask = None if mask_shape is None else mask[tuple(slice(0, d) for d in mask_shape)]
  args = (q, k, v) + (() if bias is None else (bias,))

  def oracle(q, k, v, bias=None):
    return dense_attention(q, k, v, scale=SCALE, bias=bias, mask=mask, **kw)

  def reference(q, k, v, bias=None):
    return _jax_nn(q, k, v, bias, mask, kw)

  (out, lse), vjp = jax.vjp(oracle, *args)
  (out_nn, lse_nn), vjp_nn = jax.vjp(reference, *args)

  # Rows that see a key: finite lse in the oracle, and not jax.nn's -2.38e38 in jax.nn.
  seen = jnp.isfinite(lse)
  np.testing.assert_array_equal(seen, lse_nn > -1e30)
  assert bool(jnp.any(seen))
  np.testing.assert_allclose(jnp.where(seen[..., None], out, 0),
                             jnp.where(seen[..., None], out_nn, 0), atol=1e-5, rtol=0)
  np.testing.assert_allclose(jnp.where(seen, lse, 0), jnp.where(seen, lse_nn, 0),
                             atol=1e-5, rtol=1e-6)
  np.testing.assert_array_equal(jnp.where(seen[..., None], 0, out), 0)

  # Gradients: jax.nn gives empty rows mean(v) and its lse residual no gradient, so the
  # output cotangent is zeroed on empty rows and the lse cotangent is zero.
  do = jnp.where(seen[..., None], do, 0)
  grads = vjp((do, jnp.zeros_like(lse)))
  grads_nn = vjp_nn((do, jnp.zeros_like(lse_nn)))
  for name_, g, g_nn in zip(("dq", "dk", "dv", "dbias"), grads, grads_nn):
    assert g.shape == g_nn.shape, name_
    np.testing.assert_allclose(g, g_nn, atol=2e-5, rtol=0, err_msg=name_)


def test_jax_nn_empty_row_semantics():
  """What jax.nn returns where the oracle returns out 0, lse -inf (module docstring)."""
  q, k, v, _, _, _ = _inputs(1, t=5, s=6, n=2, kv_heads=1, h=4)
  qlen = jnp.array([3, 5], jnp.int32)
  kvlen = jnp.array([0, 4], jnp.int32)
  mask = jnp.ones((1, 1, 5, 6), bool).at[:, :, 4, :].set(False)
  kw = dict(query_seq_lengths=qlen, key_value_seq_lengths=kvlen)
  out_nn, lse_nn = _jax_nn(q, k, v, None, mask, kw)
  out, lse = dense_attention(q, k, v, scale=SCALE, mask=mask, **kw)
  mean_v = jnp.mean(v, axis=1)[:, None]  # [B, 1, 1, H]: kv head 0 for both query heads
  large = -0.7 * float(jnp.finfo(jnp.float32).max) + np.log(6)
  np.testing.assert_allclose(out_nn[0, :3], jnp.broadcast_to(mean_v[0], (3, 2, 4)), atol=1e-6)
  np.testing.assert_array_equal(out_nn[0, 3:], 0)  # query padding
  np.testing.assert_allclose(out_nn[1, 4], jnp.broadcast_to(mean_v[1, 0], (2, 4)), atol=1e-6)
  np.testing.assert_allclose(lse_nn[0], large, rtol=1e-6)
  np.testing.assert_allclose(lse_nn[1, 4], large, rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(lse_nn)))
  # The oracle: every one of those rows is out 0, lse -inf.
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1, 4], 0)
  np.testing.assert_array_equal(lse[0], -np.inf)
  np.testing.assert_array_equal(lse[1, 4], -np.inf)
  assert bool(jnp.all(jnp.isfinite(lse[1, :4])))


# ------------------------------------------------------------------ against NumPy loops

def brute_force(q, k, v, *, scale, is_causal=False, bias=None, mask=None, query_seq_lengths=None,
                key_value_seq_lengths=None, local_window_size=None, q_segment_ids=None,
                kv_segment_ids=None, q_offset=0, logits_soft_cap=None, alibi_slopes=None,
                dropout_keep=None, dropout_rate=0.0):
  """float64 loop over (b, n, i, j): (out [B,T,N,H], lse [B,T,N], p [B,N,T,S])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b_, t_, n_, h_ = q.shape
  s_, k_ = k.shape[1], k.shape[2]
  offsets = np.broadcast_to(np.asarray(q_offset), (b_,))
  if isinstance(local_window_size, int):
    local_window_size = (local_window_size, local_window_size)
  if q_segment_ids is not None and kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b_, n_, t_, s_))
  mask = None if mask is None else np.broadcast_to(np.asarray(mask), (b_, n_, t_, s_))
  slopes = None if alibi_slopes is None else np.broadcast_to(
      np.asarray(alibi_slopes, np.float64), (b_, n_))
  out = np.zeros((b_, t_, n_, h_))
  lse = np.full((b_, t_, n_), -np.inf)
  p = np.zeros((b_, n_, t_, s_))
  for b in range(b_):
    for n in range(n_):
      kh = n // (n_ // k_)
      for i in range(t_):
        pos = i + int(offsets[b])
        logits = {}
        for j in range(s_):
          ok = True
          if is_causal and j > pos:
            ok = False
          if local_window_size is not None:
            left, right = local_window_size
            if left is not None and j < pos - left:
              ok = False
            if right is not None and j > pos + right:
              ok = False
          if query_seq_lengths is not None and i >= query_seq_lengths[b]:
            ok = False
          if key_value_seq_lengths is not None and j >= key_value_seq_lengths[b]:
            ok = False
          if q_segment_ids is not None and q_segment_ids[b][i] != kv_segment_ids[b][j]:
            ok = False
          if mask is not None and not mask[b, n, i, j]:
            ok = False
          if not ok:
            continue
          z = scale * float(np.dot(q[b, i, n], k[b, j, kh]))
          if bias is not None:
            z += bias[b, n, i, j]
          if logits_soft_cap is not None:
            z = logits_soft_cap * np.tanh(z / logits_soft_cap)
          if slopes is not None:
            z -= slopes[b, n] * abs(pos - j)
          logits[j] = z
        if not logits:
          continue
        top = max(logits.values())
        lse[b, i, n] = top + np.log(sum(np.exp(z - top) for z in logits.values()))
        for j, z in logits.items():
          p[b, n, i, j] = np.exp(z - lse[b, i, n])
          weight = p[b, n, i, j]
          if dropout_keep is not None:
            weight = weight * dropout_keep[b, n, i, j] / (1 - dropout_rate)
          out[b, i, n] += weight * v[b, j, kh]
  return out, lse, p


def _segments(seed, b, length, count):
  """Sorted random segment ids [b, length] in [0, count)."""
  ids = np.sort(np.random.default_rng(seed).integers(0, count, (b, length)), axis=1)
  return ids.astype(np.int32)


KEEP = np.random.default_rng(7).random((B, N, T, S)) < 0.75
BRUTE_CASES = {
    "segments-self": dict(q_segment_ids=_segments(0, B, T, 4)),
    "segments-self-causal": dict(q_segment_ids=_segments(1, B, T, 3), is_causal=True),
    "offset-int": dict(q_offset=4, is_causal=True),
    "offset-int-window": dict(q_offset=5, local_window_size=(3, 1)),
    "offset-array": dict(q_offset=np.array([6, -3], np.int32), is_causal=True),
    "offset-array-window": dict(q_offset=np.array([0, 6], np.int32), local_window_size=(4, None)),
    "window-left-none": dict(local_window_size=(None, 2)),
    "softcap": dict(logits_soft_cap=2.0),
    "softcap-bias": dict(logits_soft_cap=1.5, bias="full", is_causal=True),
    "alibi-heads": dict(alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625], np.float32)),
    "alibi-batch-offset": dict(alibi_slopes=np.linspace(0.05, 0.8, B * N, dtype=np.float32)
                               .reshape(B, N), q_offset=np.array([3, 6], np.int32),
                               is_causal=True),
    "dropout": dict(dropout_keep=KEEP, dropout_rate=0.25),
    "dropout-causal": dict(dropout_keep=KEEP, dropout_rate=0.25, is_causal=True),
    "all": dict(is_causal=True, local_window_size=(9, 3), q_offset=np.array([2, 6], np.int32),
                query_seq_lengths=QLEN, key_value_seq_lengths=KVLEN, bias="heads", mask="batch",
                logits_soft_cap=3.0, alibi_slopes=np.array([0.3, 0.2, 0.1, 0.05], np.float32),
                dropout_keep=KEEP, dropout_rate=0.25),
}


def _brute_kwargs(kw, bias, mask):
  kw = dict(kw)
  if kw.get("bias") == "full":
    kw["bias"] = bias
  elif kw.get("bias") == "heads":
    kw["bias"] = bias[:1]
  if kw.get("mask") == "batch":
    kw["mask"] = mask[:, :1]
  return kw


@pytest.mark.parametrize("name", BRUTE_CASES)
def test_matches_brute_force(name):
  q, k, v, bias, mask, _ = _inputs(2)
  kw = _brute_kwargs(BRUTE_CASES[name], bias, mask)
  if "q_segment_ids" in kw:  # kv reuses the query's segment ids: make S == T
    k, v = k[:, :T], v[:, :T]
  out, lse = dense_attention(q, k, v, scale=SCALE, **kw)
  out_np, lse_np, _ = brute_force(q, k, v, scale=SCALE, **kw)
  np.testing.assert_allclose(out, out_np, atol=1e-5, rtol=0)
  np.testing.assert_allclose(lse, lse_np, atol=1e-5, rtol=1e-6)
  assert out.dtype == lse.dtype == jnp.float32


def test_cross_segments():
  """Different q and kv segment ids, T != S."""
  q, k, v, _, _, _ = _inputs(3, t=7, s=11)
  q_ids, kv_ids = _segments(4, B, 7, 3), _segments(5, B, 11, 3)
  kw = dict(q_segment_ids=q_ids, kv_segment_ids=kv_ids)
  out, lse = dense_attention(q, k, v, scale=SCALE, **kw)
  out_np, lse_np, _ = brute_force(q, k, v, scale=SCALE, **kw)
  np.testing.assert_allclose(out, out_np, atol=1e-5, rtol=0)
  np.testing.assert_allclose(lse, lse_np, atol=1e-5, rtol=1e-6)


def test_traced_offset():
  """q_offset as a traced [B] array under jit, and the same offset as a Python int."""
  q, k, v, _, _, _ = _inputs(4)
  f = jax.jit(functools.partial(dense_attention, scale=SCALE, is_causal=True,
                                local_window_size=(5, 2)))
  offsets = jnp.array([3, 3], jnp.int32)
  out, lse = f(q, k, v, q_offset=offsets)
  out_int, lse_int = dense_attention(q, k, v, scale=SCALE, is_causal=True,
                                     local_window_size=(5, 2), q_offset=3)
  out_np, lse_np, _ = brute_force(q, k, v, scale=SCALE, is_causal=True,
                                  local_window_size=(5, 2), q_offset=3)
  np.testing.assert_allclose(out, out_np, atol=1e-5, rtol=0)
  np.testing.assert_allclose(lse, lse_np, atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(out, out_int, atol=1e-6, rtol=0)  # jit may fuse differently
  np.testing.assert_allclose(lse, lse_int, atol=1e-6, rtol=0)


def test_lse_cotangent():
  """The lse cotangent path: d(sum c * lse) = c * p * dz, against NumPy's p."""
  q, k, v, bias, _, do = _inputs(5)
  kw = dict(is_causal=True, local_window_size=(7, None), q_offset=np.array([1, 4], np.int32),
            query_seq_lengths=QLEN, q_segment_ids=_segments(6, B, T, 3))
  k, v, bias = k[:, :T], v[:, :T], bias[..., :T]  # kv reuses the query's segment ids: S = T
  (out, lse), vjp = jax.vjp(lambda q, k, v, bias: dense_attention(
      q, k, v, scale=SCALE, bias=bias, **kw), q, k, v, bias)
  seen = np.isfinite(np.asarray(lse))
  assert not seen.all() and seen.any()
  c = jnp.where(seen, np.random.default_rng(9).standard_normal(lse.shape, np.float32), 0)
  dq, dk, dv, dbias = vjp((jnp.zeros_like(out), c))
  _, _, p = brute_force(q, k, v, scale=SCALE, bias=bias, **kw)
  cp = np.asarray(c).transpose(0, 2, 1)[..., None] * p  # [B, N, T, S]
  k_rep = np.repeat(np.asarray(k, np.float64), N // K, axis=2)
  dq_np = SCALE * np.einsum("bnts,bsnh->btnh", cp, k_rep)
  dk_np = SCALE * np.einsum("bnts,btnh->bsnh", cp, np.asarray(q, np.float64))
  dk_np = dk_np.reshape(B, T, K, N // K, H).sum(axis=3)
  np.testing.assert_allclose(dbias, cp, atol=1e-5, rtol=0)
  np.testing.assert_allclose(dq, dq_np, atol=1e-5, rtol=0)
  np.testing.assert_allclose(dk, dk_np, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(dv, 0)
  # Both cotangents together: the sum of the two (linearity), and finite.
  grads = vjp((do, c))
  grads_out = vjp((do, jnp.zeros_like(lse)))
  for g, g_out, g_lse in zip(grads, grads_out, (dq, dk, dv, dbias)):
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g, g_out + g_lse, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ empty rows

def _grads(kw, q, k, v, bias, do, dlse_seen):
  (out, lse), vjp = jax.vjp(lambda q, k, v, bias: dense_attention(
      q, k, v, scale=SCALE, bias=bias, **kw), q, k, v, bias)
  dlse = jnp.where(jnp.isfinite(lse), dlse_seen, 0) if dlse_seen is not None else None
  return out, lse, vjp((do, jnp.zeros_like(lse) if dlse is None else dlse))


@pytest.mark.parametrize("dlse", [False, True], ids=["dlse0", "dlse"])
def test_all_rows_empty(dlse):
  """No row sees a key: out 0, lse -inf, every gradient exactly 0."""
  q, k, v, bias, mask, do = _inputs(6)
  dlse_seen = jnp.ones((B, T, N)) if dlse else None
  for kw in (dict(key_value_seq_lengths=jnp.zeros((B,), jnp.int32)),
             dict(mask=jnp.zeros((B, N, T, S), bool)),
             dict(is_causal=True, q_offset=-T),
             dict(local_window_size=(2, 2), q_offset=S + 3),
             dict(q_segment_ids=jnp.zeros((B, T), jnp.int32),
                  kv_segment_ids=jnp.ones((B, S), jnp.int32))):
    out, lse, grads = _grads(kw, q, k, v, bias, do, dlse_seen)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(lse, -np.inf)
    for g in grads:
      np.testing.assert_array_equal(g, 0)


@pytest.mark.parametrize("dlse", [False, True], ids=["dlse0", "dlse"])
def test_some_rows_empty(dlse):
  """Empty rows give out 0, lse -inf; their dq and dbias are 0, all gradients finite, and
  the gradients do not depend on the cotangent of an empty row."""
  q, k, v, bias, mask, do = _inputs(7)
  mask = mask.at[1, 2, 5].set(False)
  kw = dict(is_causal=True, q_offset=np.array([-4, 0], np.int32), mask=mask,
            query_seq_lengths=QLEN, alibi_slopes=np.full((N,), 0.1, np.float32),
            logits_soft_cap=5.0)
  dlse_seen = np.random.default_rng(8).standard_normal((B, T, N), np.float32) if dlse else None
  out, lse, grads = _grads(kw, q, k, v, bias, do, dlse_seen)
  empty = ~np.isfinite(np.asarray(lse))
  assert empty[0, :4].all() and empty[1, 9:].all() and empty[1, 5, 2] and not empty.all()
  np.testing.assert_array_equal(lse[empty], -np.inf)
  np.testing.assert_array_equal(np.asarray(out)[empty], 0)
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g)))
  dq, _, _, dbias = grads
  np.testing.assert_array_equal(np.asarray(dq)[empty], 0)
  np.testing.assert_array_equal(np.asarray(dbias).transpose(0, 2, 1, 3)[empty], 0)
  # Changing the output cotangent on empty rows changes no gradient.
  do2 = jnp.where(empty[..., None], 100.0, do)
  _, _, grads2 = _grads(kw, q, k, v, bias, do2, dlse_seen)
  for g, g2 in zip(grads, grads2):
    np.testing.assert_array_equal(g, g2)


# ------------------------------------------------------------------ 16-bit comparator

@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_comparator(dtype):
  """Close to the fp32 oracle, yet not equal to it nor to its rounded output (p is
  rounded); equal to jax.nn in that dtype where jax.nn has the variant."""
  q, k, v, bias, mask, do = _inputs(8, dtype=dtype)
  kw = dict(is_causal=True, local_window_size=(9, 3), bias=bias, mask=mask[:, :1],
            key_value_seq_lengths=KVLEN)
  out32, lse32 = dense_attention(q, k, v, scale=SCALE, **kw)
  out16, lse16 = dense_attention(q, k, v, scale=SCALE, dtype=dtype, **kw)
  assert out16.dtype == dtype and lse16.dtype == jnp.float32
  seen = jnp.isfinite(lse32)
  np.testing.assert_array_equal(seen, jnp.isfinite(lse16))
  err = jnp.abs(out16.astype(jnp.float32) - out32)
  assert float(jnp.max(err)) < 3e-2
  assert float(jnp.max(err)) > 0
  assert bool(jnp.any(out16 != out32.astype(dtype)))  # not just the rounded fp32 output
  np.testing.assert_allclose(jnp.where(seen, lse16, 0), jnp.where(seen, lse32, 0), atol=1e-5)

  out_nn, _ = jax.nn.dot_product_attention(q, k, v, bias, mask[:, :1], scale=SCALE,
                                           is_causal=True, local_window_size=(9, 3),
                                           key_value_seq_lengths=KVLEN,
                                           implementation="xla", return_residual=True)
  out16, out_nn = (jnp.where(seen[..., None], x, 0).astype(jnp.float32) for x in (out16, out_nn))
  # Bitwise equal but for the odd ulp (bfloat16 on CPU: 99.4% equal): jax.nn's p is
  # exp(z - max) / sum and the oracle's exp(z - lse), which can round apart in 16 bits.
  assert float(jnp.mean(out16 == out_nn)) > 0.95
  np.testing.assert_allclose(out16, out_nn, atol=2 * float(jnp.finfo(dtype).eps), rtol=0)

  # Gradients: in the dtype, loosely close to the fp32 ones.
  def grads(dt):
    _, vjp = jax.vjp(lambda q, k, v: dense_attention(q, k, v, scale=SCALE, dtype=dt, **kw),
                     q, k, v)
    return vjp((do.astype(dt), jnp.zeros((B, T, N))))

  for g16, g32 in zip(grads(dtype), grads(jnp.float32)):
    assert g16.dtype == dtype
    assert float(jnp.max(jnp.abs(g16.astype(jnp.float32) - g32))) < 0.1
