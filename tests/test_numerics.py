"""Adversarial numerics: every backend against the oracle on inputs that stress the
online softmax (DESIGN.md, "Testing").

* Large logits: |scores| up to ~100 in bf16/fp16/fp32, with the row maximum growing
  along S so the running max jumps up in every 16-wide key tile (every tile rescales),
  and exp of differences of ~200 underflows to 0 (no NaN allowed).
* Attention sinks: one key per row with a logit ~80, far above the others, at key 0
  (later tiles add only exponentially small terms) or at a random visible key (the
  running max jumps once, by tens).
* Long rows: ~2000 keys streamed 16 at a time, with a drift that keeps raising the max.
* fp16 gradients where the 16-bit rounding of dS matters.
(A fully masked query row cannot be asked for through the API: top-left causal rows
all see key 0. Padding rows past T, which the kernels mask, are in every ragged case.)

The oracle here is dense attention and its VJP in float64 (NumPy, mask from index
comparisons): at |scores| ~100 the fp32 oracle's own error is as large as what is
measured. The criterion is DESIGN.md's: max-abs error at most 2x that of
`jax.nn.dot_product_attention` in the same dtype plus 1e-5 (where jax.nn is exact,
DESIGN's degenerate rule: one ulp at the reference's magnitude, plus 1e-5).

Some of these inputs break that criterion through the FlashAttention-2 arithmetic
itself, not a kernel bug. To tell the two apart, `flash2_arithmetic` computes densely
what FA-2 computes from jflash's own residuals (out, lse), with its roundings: P =
exp(scale S - lse) (lse also one fp32 ulp either way: S recomputed in another
summation order), delta = rowsum(dO * O) with the saved 16-bit O, P and dS rounded to
the input dtype before the dV, dQ and dK products. Every case must meet

    err <= 2 * max(err(jax.nn), err(FA-2 arithmetic)) + 1e-5    (else ArithmeticExcess)

and then the criterion (else CriterionGap). Known gaps, each with its cause from the
table `python tests/test_numerics.py` prints (BUILD_NOTES.md, "Numerics tests (draft
from helper)"), are marked `xfail(raises=CriterionGap)`: strict on CPU (except RESIDUE, whose size
depends on the host CPU), so a fix shows up as a failure to remove the mark; any other
error still fails.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import jflash
from conftest import (IMPLEMENTATIONS, ON_GPU, assert_within_criterion, interpret_for,
                      jax_nn_with_grads, jflash_with_grads, random_inputs)

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32

# 16-wide tiles everywhere: the most tiles (and rescalings) per row a config allows.
TILES_16 = {
    "triton": jflash.TritonConfig(block_q=16, block_kv=16, num_warps=4, num_stages=2,
                                  block_q_dkv=16, block_kv_dkv=16, block_q_dq=16,
                                  block_kv_dq=16),
    "xla": jflash.XlaConfig(block_q=16, block_kv=16),
}
NAMES = ("out", "dq", "dk", "dv")


class CriterionGap(AssertionError):
  """jflash misses DESIGN.md's 2x-jax.nn criterion, but not the FA-2 arithmetic's bound."""


class ArithmeticExcess(AssertionError):
  """jflash's error exceeds twice that of the FA-2 arithmetic from its own residuals."""


# ------------------------------------------------------------------ reference arithmetic
# Both references are NumPy on the host: no XLA compilation per case (on a GPU, XLA's
# GEMM autotuning made each case take a minute), and float64 for the oracle.


def _np(x, dtype=np.float64):
  return np.asarray(x).astype(dtype)


def _visible(t, s, is_causal):
  """[T, S] bool from index comparisons (top-left causal: key j <= query i)."""
  return np.arange(s)[None, :] <= np.arange(t)[:, None] if is_causal else np.ones((t, s), bool)


def _per_kv_head(x, kv_heads):
  """[B, S, N, H] -> [B, S, K, H]: sum over each GQA group (n // G is kv head n)."""
  return x.reshape(*x.shape[:2], kv_heads, x.shape[2] // kv_heads, x.shape[-1]).sum(3)


def oracle64(q, k, v, do, *, scale, is_causal):
  """Dense attention and its VJP in float64: (out, lse, (dq, dk, dv)).

  At |scores| ~100 the fp32 oracle's own error (|s| eps in every probability) is as
  large as the kernels' and jax.nn's errors measured here; float64 removes it.
  Textbook softmax backward: dS = P (dP - rowsum(P dP)).
  """
  q, k, v, do = (_np(x) for x in (q, k, v, do))
  kv_heads, groups = k.shape[2], q.shape[2] // k.shape[2]
  kr, vr = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  visible = _visible(q.shape[1], k.shape[1], is_causal)
  scores = np.where(visible, np.einsum("btnh,bsnh->bnts", q, kr, optimize=True) * scale, -np.inf)
  top = scores.max(axis=-1, keepdims=True)
  p = np.exp(scores - top)
  total = p.sum(axis=-1, keepdims=True)
  p /= total
  lse = np.moveaxis((top + np.log(total))[..., 0], 1, 2)
  out = np.einsum("bnts,bsnh->btnh", p, vr, optimize=True)
  dp = np.einsum("btnh,bsnh->bnts", do, vr, optimize=True)
  ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
  dq = scale * np.einsum("bnts,bsnh->btnh", ds, kr, optimize=True)
  dk = _per_kv_head(scale * np.einsum("bnts,btnh->bsnh", ds, q, optimize=True), kv_heads)
  dv = _per_kv_head(np.einsum("bnts,btnh->bsnh", p, do, optimize=True), kv_heads)
  return out, lse, (dq, dk, dv)


def flash2_arithmetic(q, k, v, do, *, scale, is_causal, out, lse, ds_dtype=None, base2=False):
  """Dense emulation of the FlashAttention-2 backward's roundings: (dq, dk, dv).

  From the saved output `out` and the fp32 log-sum-exp `lse` [B, T, N], what the FA-2
  backward computes, in float32 like the kernels: P = exp(scale S - lse);
  delta = rowsum(dO * out); dS = P (dP - delta) rounded to `ds_dtype` (default: the
  input dtype) before dQ = scale dS K and dK = scale dS^T Q; P rounded to the input
  dtype before dV = P^T dO. Only the summation order differs from a tiled kernel.
  `ds_dtype=np.float32`, or an fp32 `out`, show what keeping dS, or O, in fp32 would
  give. `base2=True` forms P as the Triton kernels do: exp2(S scale log2(e) - lse log2(e)).
  Results are rounded to the input dtype.
  """
  dtype = np.asarray(q).dtype
  q, k, v, do, out, lse = (_np(x, np.float32) for x in (q, k, v, do, out, lse))
  kv_heads, groups = k.shape[2], q.shape[2] // k.shape[2]
  kr, vr = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("btnh,bsnh->bnts", q, kr, optimize=True)
  lse = np.moveaxis(lse, 1, 2)[..., None]
  visible = _visible(q.shape[1], k.shape[1], is_causal)
  if base2:
    log2e = np.float32(np.log2(np.e))
    x = scores * np.float32(scale * np.log2(np.e)) - lse * log2e
    p = np.exp2(np.where(visible, x, -np.inf))
  else:
    p = np.exp(np.where(visible, scores * np.float32(scale) - lse, -np.inf))
  delta = np.moveaxis(np.sum(do * out, axis=-1), 1, 2)[..., None]
  dp = np.einsum("btnh,bsnh->bnts", do, vr, optimize=True)
  ds = (p * (dp - delta)).astype(ds_dtype or dtype).astype(np.float32)
  dq = np.float32(scale) * np.einsum("bnts,bsnh->btnh", ds, kr, optimize=True)
  dk = np.float32(scale) * np.einsum("bnts,btnh->bsnh", ds, q, optimize=True)
  dv = np.einsum("bnts,btnh->bsnh", p.astype(dtype).astype(np.float32), do, optimize=True)
  return (dq.astype(dtype), _per_kv_head(dk, kv_heads).astype(dtype),
          _per_kv_head(dv, kv_heads).astype(dtype))


def err64(x, ref) -> float:
  """Max-abs difference, in float64, against a float64 reference."""
  return float(np.max(np.abs(_np(x) - ref)))


def ulp(dtype, ref) -> float:
  """One ulp of `dtype` at the largest |value| of `ref`."""
  bits = {2: 7 if dtype == jnp.bfloat16 else 10, 4: 23}[np.dtype(dtype).itemsize]
  return float(2.0 ** (np.floor(np.log2(np.max(np.abs(ref)) + 1e-300)) - bits))


def measure(implementation, q, k, v, do, *, is_causal, config):
  """Errors against the oracle: {name: (jflash, jax.nn, FA-2 arithmetic, one ulp)}, lse's.

  The FA-2 arithmetic for the gradients starts from jflash's own forward results (out,
  lse): exactly the residuals its backward pass gets. For `out` it is the oracle's
  output rounded to the dtype (the best a 16-bit output can be).
  """
  scale = q.shape[-1] ** -0.5
  out_ref, lse_ref, grads_ref = oracle64(q, k, v, do, scale=scale, is_causal=is_causal)
  out_nn, grads_nn = jax_nn_with_grads(q, k, v, do, scale=scale, is_causal=is_causal)

  (out, lse), grads = jflash_with_grads(q, k, v, do, implementation=implementation,
                                        is_causal=is_causal, config=config)
  chex.assert_tree_all_finite((out, lse, grads))
  # P = exp(scale S - lse) is only as exact as S recomputed in the backward is
  # consistent with the forward's S: a different summation order moves it by an ulp of
  # |lse| (7.6e-6 at 80), for every P of the row alike. So the FA-2 arithmetic's error is
  # taken as the worst over lse and lse one ulp either way.
  lse32 = np.asarray(lse, np.float32)
  grads_fa = [flash2_arithmetic(q, k, v, do, scale=scale, is_causal=is_causal, out=out, lse=x)
              for x in (lse32, np.nextafter(lse32, np.inf), np.nextafter(lse32, -np.inf))]
  lse_err = err64(lse, lse_ref) / (1 + float(np.max(np.abs(lse_ref))))
  dtype = np.asarray(q).dtype
  errors = {"out": (err64(out, out_ref), err64(out_nn, out_ref),
                    err64(out_ref.astype(dtype), out_ref), ulp(dtype, out_ref))}
  for i, name in enumerate(NAMES[1:]):
    errors[name] = (err64(grads[i], grads_ref[i]), err64(grads_nn[i], grads_ref[i]),
                    max(err64(g[i], grads_ref[i]) for g in grads_fa), ulp(dtype, grads_ref[i]))
  return errors, lse_err


def check(implementation, q, k, v, do, *, is_causal, config=None):
  """Measures, then `judge`s."""
  errors, lse_err = measure(implementation, q, k, v, do, is_causal=is_causal, config=config)
  judge(errors, lse_err)
  return errors


def judge(errors, lse_err):
  """The FA-2 arithmetic bound (ArithmeticExcess), then the criterion (CriterionGap).

  `errors[name]` is (jflash, jax.nn, FA-2 arithmetic, one ulp at the reference's
  magnitude). As DESIGN.md says, where jax.nn happens to be exact the criterion
  degenerates, so jax.nn's error counts as at least half an ulp (the rounding of its
  own output): at most one ulp, plus 1e-5.
  """
  # lse is fp32 in every dtype: fp32 rounding of the logits' magnitude (4 ulp).
  assert lse_err <= 4 * 2.0 ** -23, f"lse: relative error {lse_err:.3g}"
  for name, (err, err_nn, err_fa, _) in errors.items():
    if err > 2 * max(err_nn, err_fa) + 1e-5:
      raise ArithmeticExcess(
          f"{name}: error {err:.3g} > 2 x max(jax.nn {err_nn:.3g}, FA-2 arithmetic "
          f"{err_fa:.3g}) + 1e-5: more than the algorithm's own rounding")
  gaps = []
  for name, (err, err_nn, err_fa, one_ulp) in errors.items():
    try:
      assert_within_criterion(name, err, max(err_nn, one_ulp / 2))
    except AssertionError as e:
      gaps.append(f"{e} (FA-2 arithmetic: {err_fa:.3g})")
  if gaps:
    raise CriterionGap("; ".join(gaps))


# -------------------------------------------------------------------------- the inputs


def large_logit_inputs(seed, b, t, s, n, kv_heads, h, dtype):
  """Scores up to ~+-100 that grow along S for 3/4 of the rows (a new max every tile).

  q_i = a_i u + noise and k_j = b_j u + noise along one direction u = (1, ..., 1), with
  |a_i| in [2, 4] (positive for ~3/4 of the rows) and b_j rising linearly from -4.4 to
  4.4 over S, so scale q_i.k_j ~ sqrt(H) a_i b_j spans about [-100, 100]. A shared
  large component of the keys is also what real models show (massive activations).
  """
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  sign = jnp.where(jax.random.bernoulli(ks[0], 0.75, (b, t, n)), 1.0, -1.0)
  a = sign * jax.random.uniform(ks[1], (b, t, n), minval=2.0, maxval=4.0)
  bk = jnp.broadcast_to(jnp.linspace(-4.4, 4.4, s)[None, :, None], (b, s, kv_heads))
  q = a[..., None] + 0.5 * jax.random.normal(ks[2], (b, t, n, h))
  k = bk[..., None] + 0.5 * jax.random.normal(ks[3], (b, s, kv_heads, h))
  v = jax.random.normal(ks[4], (b, s, kv_heads, h))
  do = jax.random.normal(ks[5], (b, t, n, h))
  return tuple(x.astype(dtype) for x in (q, k, v, do))


def sink_inputs(seed, b, t, s, n, kv_heads, h, dtype, *, where, logit, is_causal):
  """Each query row has one key with score ~`logit`; the others score ~N(0, (logit/sqrt(H))^2).

  where="first": key 0 for every row (the attention-sink pattern). where="random": a
  random key the row can see. q_i = logit k_sink / (scale |k_sink|^2) + noise.
  """
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  groups = n // kv_heads
  k = jax.random.normal(ks[0], (b, s, kv_heads, h))
  v = jax.random.normal(ks[1], (b, s, kv_heads, h))
  do = jax.random.normal(ks[2], (b, t, n, h))
  if where == "first":
    sink = jnp.zeros((b, t, n), jnp.int32)
  else:
    visible = jnp.minimum(jnp.arange(1, t + 1), s) if is_causal else jnp.full((t,), s)
    sink = (jax.random.uniform(ks[3], (b, t, n)) * visible[None, :, None]).astype(jnp.int32)
  k_sink = jnp.repeat(k, groups, axis=2)[jnp.arange(b)[:, None, None], sink,
                                         jnp.arange(n)[None, None, :]]  # [B, T, N, H]
  scale = h ** -0.5
  q = logit * k_sink / (scale * jnp.sum(k_sink ** 2, axis=-1, keepdims=True))
  q = q + 0.3 * jax.random.normal(ks[4], (b, t, n, h))
  return tuple(x.astype(dtype) for x in (q, k, v, do))


def long_row_inputs(seed, b, t, s, n, kv_heads, h, dtype):
  """Logits ~N(0, 4) plus a drift rising by 12 over S: the row max keeps moving up.

  With u = (1, ..., 1) / sqrt(H): q = 2 z_q + sqrt(H) u and k_j = z_k + d_j u with d_j
  rising from 0 to 12, so scale q.k_j ~ 2 N(0, 1) + d_j.
  """
  q, k, v, do = random_inputs(seed, b, t, s, n, kv_heads, h, F32)
  u = jnp.ones((h,)) / h ** 0.5
  q = 2.0 * q + h ** 0.5 * u
  k = k + jnp.linspace(0.0, 12.0, s)[None, :, None, None] * u
  return tuple(x.astype(dtype) for x in (q, k, v, do))


def _id(dtype):
  return jnp.dtype(dtype).name
# ---------------------------------------------------------------------------- the cases

# (B, T, S, N, K, H): GQA 2:1, 16 query rows per tile, 16 keys per tile.
SMALL = (1, 96, 256, 2, 1, 32)
LARGE_LOGITS = [(dtype, causal) for dtype in (BF16, F16, F32) for causal in (False, True)]
# Sink at key 0 without a mask; at a random visible key with the causal mask.
SINKS = [(dtype, where) for dtype in (BF16, F16, F32) for where in ("first", "random")]
# ~2000 keys per row, or 1024 rows of up to 1024 keys (causal), through 16-wide tiles.
LONG_ROWS = [(dtype, causal) for dtype in (BF16, F16, F32) for causal in (False, True)]
LONG_SHAPES = {False: (1, 32, 2000, 2, 1, 32), True: (1, 1024, 1024, 2, 1, 32)}
# The case of BUILD_NOTES.md "dS is rounded to the input dtype" (default tiles).
DS_SHAPE = (1, 200, 128, 4, 4, 256)
DS_SEEDS = (0, 1, 2)


def large_logit_case(dtype, causal):
  return large_logit_inputs(0, *SMALL, dtype), causal


def sink_case(dtype, where):
  causal = where == "random"
  return sink_inputs(1, *SMALL, dtype, where=where, logit=80.0, is_causal=causal), causal


def long_row_case(dtype, causal):
  return long_row_inputs(2, *LONG_SHAPES[causal], dtype), causal


def ds_case(seed):
  return random_inputs(seed, *DS_SHAPE, F16), False


# --------------------------------------------------------------------------- the tests

# Where jflash misses the criterion (CriterionGap), and why: the columns of the table
# that `python tests/test_numerics.py` prints (BUILD_NOTES.md, "Numerics tests") say
# which rounding of the FA-2 arithmetic is responsible. "*" is both implementations.
DELTA = ("FA-2 forms delta = rowsum(dO * O) from the 16-bit O and rounds dS to 16 bits; "
         "only with both in fp32 does the FA-2 arithmetic meet the criterion")
DS = "FA-2 rounds dS to 16 bits before dS K / dS^T Q; with fp32 dS it meets the criterion"
LSE = ("FA-2 recomputes P = exp(scale S - lse) from an fp32 lse of magnitude ~80: an ulp of "
       "lse (7.6e-6) is that relative error in every P of the row, where jax.nn subtracts "
       "the exact row max")
RESIDUE = ("jax.nn's dk is exact here (P one-hot; error ~1e-15), jflash's is the rounding "
           "residue of dP - delta, 8e-7 to 1.1e-5 by host CPU: the degenerate case of "
           "BUILD_NOTES' S = 1 note")
# On CPU jax.nn falls back from its 16-bit dot algorithms (unsupported there) to fp32
# products, so its dS stays fp32: a stricter reference than on a GPU.
GAPS_CPU = {
    DELTA: ["large_logits[*-bfloat16-full]", "large_logits[*-bfloat16-causal]",
            "large_logits[*-float16-full]", "large_logits[*-float16-causal]",
            "sinks[*-bfloat16-random]", "sinks[*-float16-random]",
            "long_rows[*-bfloat16-causal]"],
    DS: ["long_rows[*-float16-full]"],
    LSE: ["sinks[xla-float16-first]", "sinks[*-float32-first]", "sinks[*-float32-random]"],
    RESIDUE: ["sinks[*-bfloat16-first]", "sinks[triton-float16-first]"],
}
# On a GPU (H200, jax 0.11.2), jax.nn rounds its dS to 16 bits too (its dot algorithm
# presets BF16_BF16_F32 / F16_F16_F32 take 16-bit operands). Non-strict there: the
# reference's error depends on library versions and GEMM autotuning. Measured on two
# H200s against the float64 oracle, with the Triton backward's fp32 exponent fixed (it
# formed exp2(S c - lse log2(e)) and missed the FA-2 arithmetic's own bound by ~4x;
# `jflash.kernels.triton.common.probabilities` now subtracts in natural units first).
GAPS_GPU = {
    DELTA: ["sinks[*-bfloat16-random]"],
    LSE: ["sinks[*-float16-first]", "sinks[*-float32-first]", "sinks[*-float32-random]",
          "large_logits[triton-float32-full]"],
}


def _marks():
  marks = {}
  for reason, names in (GAPS_GPU if ON_GPU else GAPS_CPU).items():
    for name in names:
      for implementation in IMPLEMENTATIONS:
        # Strict on CPU, where interpret mode and XLA:CPU are fixed arithmetic, except
        # RESIDUE: its size depends on the host CPU's code generation (dk 1.1e-5 on the
        # machines these marks were measured on, 8.3e-7 on an AMD EPYC host, against a
        # bound of 1e-5). The FA-2 arithmetic bound (ArithmeticExcess) holds either way.
        strict = not ON_GPU and reason is not RESIDUE
        marks[name.replace("*", implementation)] = pytest.mark.xfail(
            raises=CriterionGap, strict=strict, reason=reason)
  return marks


MARKS = _marks()


def _params(test, cases, ids):
  params = []
  for implementation in IMPLEMENTATIONS:
    for case, case_id in zip(cases, ids):
      mark = MARKS.get(f"{test}[{implementation}-{case_id}]")
      params.append(pytest.param(implementation, *case, id=f"{implementation}-{case_id}",
                                 marks=[mark] if mark else []))
  return params


def _causal_id(dtype, causal):
  return f"{_id(dtype)}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("implementation, dtype, is_causal", _params(
    "large_logits", LARGE_LOGITS, [_causal_id(*c) for c in LARGE_LOGITS]))
def test_large_logits(implementation, dtype, is_causal):
  """|scores| up to ~100, a new row max in every 16-wide tile (and rows where the max
  comes first); exp of a difference of ~200 underflows to 0 and must not give NaN."""
  inputs, causal = large_logit_case(dtype, is_causal)
  check(implementation, *inputs, is_causal=causal, config=TILES_16[implementation])


@pytest.mark.parametrize("implementation, dtype, where", _params(
    "sinks", SINKS, [f"{_id(d)}-{w}" for d, w in SINKS]))
def test_attention_sinks(implementation, dtype, where):
  """One key per row ~80 above the rest: P is one-hot to within e^-10 or less."""
  inputs, causal = sink_case(dtype, where)
  check(implementation, *inputs, is_causal=causal, config=TILES_16[implementation])


@pytest.mark.parametrize("implementation, dtype, is_causal", _params(
    "long_rows", LONG_ROWS, [_causal_id(*c) for c in LONG_ROWS]))
def test_long_rows_through_small_tiles(implementation, dtype, is_causal):
  """~2000 keys per row (or 1024 causal rows) 16 at a time: 64-125 rescalings per row."""
  inputs, causal = long_row_case(dtype, is_causal)
  check(implementation, *inputs, is_causal=causal, config=TILES_16[implementation])


@pytest.mark.parametrize("implementation, seed", _params(
    "fp16_ds", [(s,) for s in DS_SEEDS], [f"seed{s}" for s in DS_SEEDS]))
def test_fp16_gradients_where_ds_rounding_matters(implementation, seed):
  """B1-T200-S128-N4-K4-H256 fp16 with default tiles: dS is rounded to fp16 before the
  dS K and dS^T Q products (BUILD_NOTES.md, "dS is rounded to the input dtype").

  Holds dq/dk to the criterion, and pins what the fp16 dS costs: jflash's dq/dk
  errors are those of the FA-2 arithmetic with fp16 dS (within 10%), and the same
  arithmetic with fp32 dS is within 0.6x of the criterion's bound (measured: 0.26-0.35
  of it, against 0.45-0.76 with fp16 dS; BUILD_NOTES.md).
  """
  (q, k, v, do), causal = ds_case(seed)
  scale = q.shape[-1] ** -0.5
  errors, lse_err = measure(implementation, q, k, v, do, is_causal=causal, config=None)
  out_ref, lse_ref, grads_ref = oracle64(q, k, v, do, scale=scale, is_causal=causal)
  stats = dict(scale=scale, is_causal=causal, out=out_ref.astype(np.float16), lse=lse_ref)
  fp16_ds = flash2_arithmetic(q, k, v, do, **stats)
  fp32_ds = flash2_arithmetic(q, k, v, do, **stats, ds_dtype=np.float32)
  for i, name in ((0, "dq"), (1, "dk")):
    err, err_nn, _, _ = errors[name]
    assert err64(fp32_ds[i], grads_ref[i]) <= 0.6 * (2 * err_nn + 1e-5), name
    assert err <= 1.1 * err64(fp16_ds[i], grads_ref[i]) + 1e-5, name
  judge(errors, lse_err)


def _table():
  """Prints every case's errors (python tests/test_numerics.py): the BUILD_NOTES numbers."""
  rows = [("large", _causal_id(d, c), large_logit_case(d, c), TILES_16) for d, c in LARGE_LOGITS]
  rows += [("sink", f"{_id(d)}-{w}", sink_case(d, w), TILES_16) for d, w in SINKS]
  rows += [("long", _causal_id(d, c), long_row_case(d, c), TILES_16) for d, c in LONG_ROWS]
  rows += [("fp16-dS", f"seed{s}", ds_case(s), {"triton": None, "xla": None}) for s in DS_SEEDS]
  print("ratio = error / (2 x jax.nn's error + 1e-5). FA-2: flash2_arithmetic from jflash's "
        "(out, lse); from the oracle's (lse, out rounded): FA2*, and with fp32 dS: dS32, "
        "also fp32 O: dS32+O32; base2: FA-2 from jflash's residuals with Triton's exp2")
  for kind, name, ((q, k, v, do), causal), configs in rows:
    scale = q.shape[-1] ** -0.5
    out_ref, lse_ref, grads_ref = oracle64(q, k, v, do, scale=scale, is_causal=causal)
    stats = dict(scale=scale, is_causal=causal, lse=lse_ref)
    rounded = out_ref.astype(np.asarray(q).dtype)
    variants = {
        "FA2*": flash2_arithmetic(q, k, v, do, **stats, out=rounded),
        "dS32": flash2_arithmetic(q, k, v, do, **stats, out=rounded, ds_dtype=np.float32),
        "dS32+O32": flash2_arithmetic(q, k, v, do, **stats, out=out_ref, ds_dtype=np.float32)}
    for implementation in IMPLEMENTATIONS:
      errors, _ = measure(implementation, q, k, v, do, is_causal=causal,
                          config=configs[implementation])
      row = dict(variants)
      if implementation == "triton":
        out, lse = jflash.attention(q, k, v, is_causal=causal, implementation="triton",
                                    interpret=interpret_for("triton"), return_lse=True,
                                    config=configs["triton"])
        row["base2"] = flash2_arithmetic(q, k, v, do, scale=scale, is_causal=causal, out=out,
                                         lse=lse, base2=True)
      cells = []
      for i, name_ in enumerate(NAMES):
        err, err_nn, err_fa, one_ulp = errors[name_]
        bound = 2 * max(err_nn, one_ulp / 2) + 1e-5
        cell = f"{name_} {err:.2e} ({err / bound:.2f}; FA-2 {err_fa / bound:.2f}"
        if i:
          cell += "".join(f", {v_} {err64(g[i - 1], grads_ref[i - 1]) / bound:.2f}"
                          for v_, g in row.items())
        cells.append(cell + ")")
      print(f"{kind:8s}{name:18s}{implementation:7s}", " | ".join(cells), flush=True)


if __name__ == "__main__":
  _table()
