"""The Mosaic GPU (Hopper) backend against the fp32 oracle.

On a CPU the kernels run in Mosaic GPU interpret mode with race detection (their
interpretable form: Kᵀ pre-transposed, P through shared memory); small shapes keep it
fast, yet cover both consumers' different tile ranges, ragged T and S, GQA, padded
head dims, windows, offsets and lengths (static and per batch element), packing with
segment ids, soft-cap, and persistent CTAs that run several work items (3 CTAs in
interpret mode). On a Hopper GPU the same cases, and larger ones, run natively in both
forms, and with and without the intra-warpgroup overlap that only the native form has.
"""

from __future__ import annotations

import functools
import sys

import chex
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

import jflash
from jflash.reference import dense_attention
from conftest import HOPPER, ON_GPU, assert_within_criterion, max_err, random_inputs

BF16, F16 = jnp.bfloat16, jnp.float16
needs_hopper = pytest.mark.skipif(ON_GPU and not HOPPER, reason="needs a Hopper GPU (sm90)")

# (B, T, S, N, K, H, dtype, kwargs of jflash.attention)
CASES = {
    "full-gqa-ragged": (1, 100, 150, 2, 1, 64, BF16, {}),
    "causal-h96-two-ctas": (1, 200, 200, 2, 1, 96, F16, {"is_causal": True}),
    "window-softcap": (1, 192, 160, 2, 2, 64, BF16,
                       {"local_window_size": (50, 20), "logits_soft_cap": 8.0}),
    "causal-offset-h80": (1, 64, 160, 1, 1, 80, BF16, {"is_causal": True, "q_offset": 128}),
    # H = 256 (250 padded): the two consumers of each kernel share one tile (consumer 0
    # hands P, with soft-cap times its derivative, to consumer 1; in the dQ kernel dS
    # comes back and each adds half of dQ's columns).
    "causal-h256-split": (1, 70, 100, 2, 1, 256, BF16, {"is_causal": True}),
    "h250-gqa-window-softcap": (1, 70, 90, 4, 2, 250, BF16,
                                {"local_window_size": (40, 30), "logits_soft_cap": 5.0}),
    # Runtime positions: per-batch offsets and lengths (a fully padded batch row too).
    "lengths-offset-causal": (3, 140, 200, 2, 1, 64, BF16, {
        "is_causal": True, "q_offset": np.array([60, 0, 7], np.int32),
        "query_seq_lengths": np.array([140, 77, 0], np.int32),
        "key_value_seq_lengths": np.array([200, 130, 5], np.int32)}),
    # Packing: segments that start mid-tile, a segment past the CTA boundary, and one
    # tile-aligned boundary (full tiles in the lists); causal on top.
    "segments-causal": (2, 256, 256, 2, 2, 64, F16, {
        "is_causal": True,
        "q_segment_ids": np.repeat(np.array([[0, 1, 2, 3], [4, 4, 5, 6]], np.int32),
                                   np.array([37, 91, 64, 64]), axis=1)}),
    # Different query and key packings (cross-attention), with lengths and a window.
    "segments-cross-window": (1, 100, 300, 2, 1, 96, BF16, {
        "local_window_size": (150, 120),
        "q_segment_ids": np.repeat(np.array([[1, 2, 3]], np.int32), [30, 50, 20], axis=1),
        "kv_segment_ids": np.repeat(np.array([[1, 2, 9, 3]], np.int32), [90, 100, 50, 60],
                                    axis=1),
        "key_value_seq_lengths": np.array([280], np.int32)}),
}
GPU_CASES = {
    "causal-h64-1000": (2, 1000, 1000, 4, 2, 64, BF16, {"is_causal": True}),
    "full-h128-gqa": (1, 1024, 1536, 8, 2, 128, BF16, {}),
    "causal-h128-f16": (1, 2048, 2048, 4, 4, 128, F16, {"is_causal": True}),
    "full-h192": (1, 700, 900, 2, 1, 192, BF16, {}),
    "causal-h256": (1, 1024, 1024, 2, 1, 256, BF16, {"is_causal": True}),
    "window-h256-softcap": (1, 1024, 1024, 2, 2, 256, F16,
                            {"local_window_size": (300, 0), "logits_soft_cap": 20.0}),
    "causal-h32-padded": (1, 512, 512, 2, 1, 32, BF16, {"is_causal": True}),
    "segments-h128-lengths": (2, 2048, 2048, 4, 2, 128, BF16, {
        "is_causal": True,
        "q_segment_ids": np.repeat(np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32),
                                   np.array([300, 1000, 700, 48]), axis=1),
        "query_seq_lengths": np.array([2048, 1500], np.int32)}),
    # T > 8k: the causal forward runs one CTA per item (default_config), and all three
    # kernels run in L2 sections (2 pairs of 4; common.l2_group); a ragged last tile.
    "causal-h128-long-sections": (1, 8320, 8320, 4, 4, 128, BF16, {"is_causal": True}),
    "offset-h256-lengths": (2, 700, 1024, 2, 2, 256, F16, {
        "is_causal": True, "q_offset": np.array([324, 0], np.int32),
        "key_value_seq_lengths": np.array([1024, 600], np.int32)}),
}


@pytest.fixture(autouse=True)
def _race_detector():
  """Fresh interpret-mode state per test, and no race recorded by the end of it."""
  if ON_GPU:
    yield
    return
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
  from jflash.kernels.mosaic_gpu.common import races_found
  gpu_callbacks.reset_gpu_interpret_mode_state()
  yield
  assert not races_found(), "interpret mode found a race"


def _mask_kwargs(kwargs):
  return {key: kwargs[key] for key in (
      "is_causal", "local_window_size", "q_offset", "logits_soft_cap", "query_seq_lengths",
      "key_value_seq_lengths", "q_segment_ids", "kv_segment_ids") if key in kwargs}


def _oracle(q, k, v, do, d_lse, kwargs):
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  f = lambda *a: dense_attention(*a, scale=q.shape[-1] ** -0.5, **_mask_kwargs(kwargs))
  (out, lse), vjp = jax.vjp(f, *f32)
  return out, lse, vjp((do.astype(jnp.float32), d_lse))


def _attention(q, k, v, do, d_lse, kwargs, implementation, interpret=False, config=None):
  f = jax.jit(lambda *a: jflash.attention(*a, implementation=implementation, config=config,
                                           interpret=interpret, return_lse=True, **kwargs))
  (out, lse), vjp = jax.vjp(f, q, k, v)
  return out, lse, vjp((do, d_lse))


def _check(case, seed=0, config=None):
  b, t, s, n, kv_heads, h, dtype, kwargs = case
  q, k, v, do = random_inputs(seed, b, t, s, n, kv_heads, h, dtype)
  # An lse cotangent too (as a loss on lse would give), on the rows that see a key.
  _, lse_ref = dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                               scale=h ** -0.5, **_mask_kwargs(kwargs))
  d_lse = jnp.where(jnp.isfinite(lse_ref),
                    jax.random.normal(jax.random.PRNGKey(seed + 1), lse_ref.shape), 0.0)
  out_ref, lse_ref, grads_ref = _oracle(q, k, v, do, d_lse, kwargs)
  # The criterion's yardstick: the xla backend in the same dtype (jax.nn has no window
  # with q_offset nor soft-cap), which rounds like jax.nn (tests/test_numerics.py).
  out_x, _, grads_x = _attention(q, k, v, do, d_lse, kwargs, "xla")
  out, lse, grads = _attention(q, k, v, do, d_lse, kwargs, "mosaic_gpu", interpret=not ON_GPU,
                               config=config)
  chex.assert_trees_all_equal_shapes_and_dtypes((out, grads), (q, (q, k, v)))
  assert_within_criterion("out", max_err(out, out_ref), max_err(out_x, out_ref))
  finite = jnp.isfinite(lse_ref)
  assert bool(jnp.all(jnp.isfinite(lse) == finite)), "lse is -inf exactly where no key is seen"
  assert max_err(jnp.where(finite, lse, 0), jnp.where(finite, lse_ref, 0)) < 1e-3
  for name, g, g_x, g_ref in zip(("dq", "dk", "dv"), grads, grads_x, grads_ref):
    assert_within_criterion(name, max_err(g, g_ref), max_err(g_x, g_ref))


@needs_hopper
@pytest.mark.parametrize("name", CASES)
def test_against_oracle(name):
  _check(CASES[name])


@needs_hopper
def test_one_cta_per_work_item():
  """The forward's non-persistent launch (the default is one CTA per SM over all items)."""
  _check(CASES["lengths-offset-causal"], config=jflash.MosaicGpuConfig(persistent=False))


@needs_hopper
@pytest.mark.parametrize("name", ["full-gqa-ragged", "segments-causal"])
def test_dq_kernel_own_tiles(name):
  """The dQ kernel with tiles of its own, unlike the dK/dV kernel's (T and S padded to
  whole CTAs of both: 256 query rows, 128 key rows): ragged T and S, packing."""
  _check(CASES[name], config=jflash.MosaicGpuConfig(
      bwd_block_q=64, bwd_block_kv=64, bwd_dq_block_q=128, bwd_dq_block_kv=128))


def test_dq_tiles_validated():
  """The dQ kernel's own tiles are None (the backward's) or positive multiples of 64."""
  assert jflash.MosaicGpuConfig(bwd_dq_block_q=None).bwd_dq_block_q is None
  for bad in (96, 0, 64.0):
    with pytest.raises(ValueError, match=f"bwd_dq_block_kv={bad!r} must be a positive multiple of 64"):
      jflash.MosaicGpuConfig(bwd_dq_block_kv=bad)


@needs_hopper
def test_causal_work_in_l2_sections(monkeypatch):
  """Causal work in L2 sections sized for the persistent CTAs' deal, in the forward and
  the persistent dQ kernel: 3 pairs of 2 row blocks, the budget shrunk to 2 pairs' K/V.
  In interpret mode (3 CTAs) sections of 2 pairs would deal 1.33x the mean to one CTA,
  so sections of 1 pair; natively the 6 items get 6 CTAs, which any sections balance,
  so the fit of 2 pairs stays. Either way the kernels run more than one section, and
  every item is still computed once and right."""
  from jflash.kernels.mosaic_gpu import common
  bytes_per_pair = 2 * 256 * 128 * 2  # K and V, S=256, H=128, bf16
  monkeypatch.setattr(common, "L2_BUDGET", 2 * bytes_per_pair)
  groups = set()
  l2_group = common.l2_group

  def spy(*args):
    caller = sys._getframe(1).f_code.co_filename.rsplit("/", 1)[-1]  # pylint: disable=protected-access
    groups.add((caller, args, l2_group(*args)))
    return l2_group(*args)

  monkeypatch.setattr(common, "l2_group", spy)
  _check((1, 256, 256, 3, 1, 128, BF16, {"is_causal": True}),
         config=jflash.MosaicGpuConfig(bwd_persistent=True))
  # (caller, (bytes per pair, pairs, rows, CTAs), pairs per section)
  ctas, section = (6, 2) if ON_GPU else (3, 1)
  assert groups == {("forward.py", (bytes_per_pair, 3, 2, ctas), section),
                    ("backward.py", (bytes_per_pair, 3, 2, ctas), section)}, groups


@needs_hopper
def test_causal_work_in_l2_sections_one_cta_per_item(monkeypatch):
  """With one CTA per work item (the hardware hands them out), causal work runs in L2
  sections past L2_SECTION_ROWS row blocks too, in the forward and in both backward
  kernels: here 1 row block stands for the limit, 3 pairs of 2 row blocks, the budget
  shrunk to 1 pair's streamed operands (K/V for the forward and dQ, Q/dO for dK/dV)."""
  from jflash.kernels.mosaic_gpu import common
  bytes_per_pair = 2 * 256 * 128 * 2  # two [256, 128] bf16 operands per pair
  monkeypatch.setattr(common, "L2_BUDGET", bytes_per_pair)
  monkeypatch.setattr(common, "L2_SECTION_ROWS", 1)
  calls = []
  l2_group = common.l2_group

  def spy(*args):
    calls.append((sys._getframe(1).f_code.co_filename.rsplit("/", 1)[-1], args,  # pylint: disable=protected-access
                  l2_group(*args)))
    return calls[-1][-1]

  monkeypatch.setattr(common, "l2_group", spy)
  _check((1, 256, 256, 3, 3, 128, BF16, {"is_causal": True}),
         config=jflash.MosaicGpuConfig(persistent=False, bwd_persistent=False))
  # (caller, (bytes per pair, pairs, rows, CTAs), pairs per section): the forward (run
  # twice: alone and in the VJP), the dQ kernel (128-row blocks) and the dK/dV kernel
  # (2 x 64 keys); no CTA count: not persistent.
  assert sorted(calls) == [("backward.py", (bytes_per_pair, 3, 2, None), 1)] * 2 + [
      ("forward.py", (bytes_per_pair, 3, 2, None), 1)] * 2, calls


def test_l2_sections_past_the_row_limit_only_without_persistence():
  """Past L2_SECTION_ROWS row blocks a persistent launch runs no sections (its snake deal
  would not balance one pair's longest-first rows), a launch of one CTA per item does."""
  from jflash.kernels.mosaic_gpu import common
  rows = common.L2_SECTION_ROWS + 1
  per_pair = common.L2_BUDGET // 2
  assert common.l2_group(per_pair, 16, rows) == 2
  assert common.l2_group(per_pair, 16, rows, ctas=132) == 16
  assert common.l2_group(4 * common.L2_BUDGET, 16, rows) == 1  # at least one pair
  # Within the limit a persistent launch keeps the fit where its deal balances it (here
  # one item per CTA).
  rows = common.L2_SECTION_ROWS
  assert common.l2_group(per_pair, 16, rows, ctas=16 * rows) == 2


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("name", GPU_CASES)
def test_against_oracle_native(name):
  _check(GPU_CASES[name])


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("name", [*CASES, *GPU_CASES])
def test_other_forward_loop_native(name):
  """The forward with the loop that its default config does not pick (native form only).

  The default overlaps softmax with the matrix multiplies (FlashAttention-3's
  intra-warpgroup pipelining) at head dims > 64 unless causal with T <= 4k; this runs
  each case with the other choice, so both loops meet every variant (positional ranges known at
  trace time or at run time, masked runs before and after the unmasked one, tile lists).
  """
  import dataclasses
  from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
  case = {**CASES, **GPU_CASES}[name]
  _, t, _, _, _, h, _, kwargs = case
  config = default_config(kernel_head_dim(h), kwargs.get("is_causal", False), t)
  _check(case, config=dataclasses.replace(config, overlap=not config.overlap))


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("name", [
    pytest.param("causal-h96-two-ctas", marks=pytest.mark.xfail(
        strict=True, reason="jax 0.11.2 Mosaic GPU layout inference fails on the "
        "interpretable form at H=96 (64-byte swizzle) natively; interpret mode runs it")),
    "window-softcap", "full-gqa-ragged"])
def test_interpretable_form_runs_natively(name):
  """The interpretable form (what CI race-checks) computes the native form's results.

  (At H=256 its extra shared-memory buffers, Kᵀ, Qᵀ, dOᵀ and P, exceed Hopper's 227 KiB:
  that form is for interpret mode, which has no such limit.)
  """
  from jflash.kernels.mosaic_gpu import backward, forward
  from jflash.kernels.mosaic_gpu.config import MosaicGpuConfig
  from jflash.masks import MaskSpec
  from jflash.scores import ScoreMod
  b, t, s, n, kv_heads, h, dtype, kwargs = CASES[name]
  q, k, v, do = random_inputs(1, b, t, s, n, kv_heads, h, dtype)
  left, right = kwargs.get("local_window_size", (None, None))
  spec = MaskSpec(q_len=t, kv_len=s, is_causal=kwargs.get("is_causal", False),
                  window=None if left is None else (left, right))
  mod = ScoreMod(soft_cap=kwargs.get("logits_soft_cap"))
  config = MosaicGpuConfig()
  results = []
  for interpretable in (False, True):
    run = functools.partial(forward.forward, scale=h ** -0.5, spec=spec, score_mod=mod,
                            config=config, interpretable=interpretable)
    out, lse = jax.jit(run)(q, k, v)
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    grads = jax.jit(functools.partial(
        backward.backward, scale=h ** -0.5, spec=spec, score_mod=mod, config=config,
        interpretable=interpretable))(q, k, v, jnp.where(jnp.isinf(lse), jnp.inf, lse),
                                      delta, do)
    results.append((out, lse, *grads))
  for name_, native, interp in zip(("out", "lse", "dq", "dk", "dv"), *results):
    scale = float(jnp.max(jnp.abs(native.astype(jnp.float32)))) + 1e-6
    assert max_err(interp, native) <= 2e-2 * scale, name_


def test_race_in_the_first_backward_kernel_is_reported(monkeypatch):
  """Interpret mode keeps the race record of the last kernel it ran only, so the dQ
  kernel's is checked before the dK/dV kernel starts. Here the dQ kernel's consumer 1
  takes the P handed to it without waiting for it (a race the dK/dV kernel does not
  have): the backward must raise. Before the per-kernel check it passed silently."""
  import types  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks  # pylint: disable=g-import-not-at-top
  from jflash.kernels.mosaic_gpu import backward_dq, backward_steps  # pylint: disable=g-import-not-at-top

  def hand_over_without_wait(share, handed, t, value=None):
    if value is not None:
      return backward_steps.hand_over(share, handed, t, value)
    slot = lax.rem(t, jnp.int32(share.shape[0]))
    plgpu.barrier_arrive(handed.at[slot])  # arrives, does not wait
    return plgpu.load(share.at[slot], layout=backward_steps.WGMMA)

  racy = types.SimpleNamespace(**{**vars(backward_steps), "hand_over": hand_over_without_wait})
  monkeypatch.setattr(backward_dq, "steps", racy)
  jax.clear_caches()
  b, t, s, n, kv_heads, h, dtype, kwargs = CASES["causal-h256-split"]  # the split dQ kernel
  with jax.default_device(jax.devices("cpu")[0]):
    q, k, v, do = random_inputs(0, b, t, s, n, kv_heads, h, dtype)
    with pytest.raises(Exception, match="data race"):
      jax.block_until_ready(_attention(q, k, v, do, jnp.zeros((b, t, n)), kwargs,
                                       "mosaic_gpu", interpret=True))
  gpu_callbacks.reset_gpu_interpret_mode_state()  # the race was meant; the fixture checks
  jax.clear_caches()


@pytest.mark.gpu
@needs_hopper
def test_bitwise_deterministic():
  """Two runs of the backward give the same bits (no atomics in either kernel)."""
  b, t, s, n, kv_heads, h, dtype, kwargs = GPU_CASES["causal-h64-1000"]
  q, k, v, do = random_inputs(3, b, t, s, n, kv_heads, h, dtype)
  f = jax.jit(lambda *a: jax.vjp(lambda *x: jflash.attention(
      *x, implementation="mosaic_gpu", deterministic=True, **kwargs), *a[:3])[1](a[3]))
  chex.assert_trees_all_equal(f(q, k, v, do), f(q, k, v, do))


# The fused backward's consumers exchange dS and take every tile of their CTA (both
# masks apply); at H = 128 (padded from 112 and 120 here) they split dQ's columns,
# below it they take turns (H = 64, 96 here).
FUSED_CASES = {
    **{name: CASES[name] for name in ("full-gqa-ragged", "causal-h96-two-ctas",
                                       "segments-causal", "lengths-offset-causal")},
    "causal-h112-gqa-ragged": (1, 200, 230, 4, 2, 112, BF16, {"is_causal": True}),
    "segments-h120-window": (2, 160, 200, 2, 1, 120, F16, {
        "local_window_size": (40, 30), "key_value_seq_lengths": np.array([200, 150], np.int32),
        "q_segment_ids": np.repeat(np.array([[1, 2, 3], [4, 4, 5]], np.int32), [30, 100, 30],
                                   axis=1),
        "kv_segment_ids": np.repeat(np.array([[1, 2, 3], [4, 4, 5]], np.int32),
                                    [50, 100, 50], axis=1)}),
}


def _check_fused(case, **tiles):
  """`case` with the fused backward: deterministic=False and bwd_fused on the default
  tiles (with `tiles` replaced)."""
  import dataclasses
  from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
  _, t, _, _, _, h, _, kwargs = case
  config = dataclasses.replace(
      default_config(kernel_head_dim(h), kwargs.get("is_causal", False), t), bwd_fused=True,
      **tiles)
  _check((*case[:-1], {**kwargs, "deterministic": False}), config=config)


@needs_hopper
@pytest.mark.parametrize("name", FUSED_CASES)
def test_fused_backward(name):
  """The fused backward, dQ by fp32 reduce-adds (here: GQA with ragged T and S, H=96
  with its 64-byte swizzle, packing, runtime offsets and lengths, and the column split
  at H=128 with causal, windows and tile lists)."""
  _check_fused(FUSED_CASES[name])


# The dQ shares (backward_steps.DQ_SHARES) where config.fused_dq_share would not pick
# them: "alternate" (the consumers take turns, all columns) also serves H = 128.
@needs_hopper
@pytest.mark.parametrize("name", ["causal-h112-gqa-ragged", "segments-h120-window"])
def test_fused_backward_alternate_share_at_h128(name, monkeypatch):
  """The fused backward with the consumers taking turns on dQ at H = 128."""
  from jflash.kernels.mosaic_gpu import backward
  chosen = []
  monkeypatch.setattr(backward, "fused_dq_share", lambda h: chosen.append(h) or "alternate")
  jax.clear_caches()  # traces with the default share would be reused
  _check_fused(FUSED_CASES[name])
  assert chosen == [128], chosen


# At small T the default causal tiles have 64 queries; past T = 8k the fused default
# takes 128 (config.default_config): the causal cases again with those.
@needs_hopper
@pytest.mark.parametrize("name", ["causal-h48-gqa-ragged", "segments-causal",
                                  "lengths-offset-causal"])
def test_fused_backward_causal_128_query_tiles(name):
  """The fused backward of causal cases (H <= 64) with 128-query tiles (2 stages)."""
  case = {**FUSED_CASES,
          "causal-h48-gqa-ragged": (1, 200, 230, 4, 2, 48, BF16, {"is_causal": True})}[name]
  _check_fused(case, bwd_block_q=128, bwd_num_stages=2)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("name", [name for name, case in {**CASES, **GPU_CASES}.items()
                                  if case[5] <= 128])
def test_fused_backward_native(name):
  """The fused backward natively on every case with H <= 128."""
  _check_fused({**CASES, **GPU_CASES}[name])


@needs_hopper
@pytest.mark.parametrize("deterministic,fused", [(True, False), (False, False), (False, True)])
def test_backward_kernels(deterministic, fused):
  """The dQ and dK/dV kernels run unless bwd_fused (with deterministic=False) asks for
  the fused one alone; bwd_fused with deterministic=True or H > 128 is refused."""
  q, k, v, do = random_inputs(0, 1, 128, 128, 2, 1, 64, BF16)
  config = jflash.MosaicGpuConfig(bwd_fused=fused)
  def grads(q, k, v, do, deterministic=deterministic, config=config):
    return jax.vjp(lambda *x: jflash.attention(
        *x, implementation="mosaic_gpu", interpret=not ON_GPU, deterministic=deterministic,
        config=config), q, k, v)[1](do)
  text = str(jax.make_jaxpr(grads)(q, k, v, do))
  assert "jflash_mgpu_bwd_dkv" in text
  assert ("jflash_mgpu_bwd_dq" in text) == (not fused)
  if fused:
    fused_config = jflash.MosaicGpuConfig(bwd_fused=True)
    with pytest.raises(ValueError, match="bwd_fused=True.*needs deterministic=False"):
      grads(q, k, v, do, deterministic=True, config=fused_config)
    wide = random_inputs(0, 1, 128, 128, 2, 1, 192, BF16)
    with pytest.raises(ValueError, match="head dims <= 128, not 192"):
      grads(*wide, deterministic=False,
            config=jflash.MosaicGpuConfig(block_kv=64, bwd_fused=True))


def _backward_steps(h, t, config, monkeypatch):
  """(kernel name, asynchronous) of each backward kernel's step, lowered natively for
  cuda (Python's part of Mosaic GPU's lowering runs on any machine; nothing runs)."""
  from jflash.kernels.mosaic_gpu import backward_steps
  seen, pipelined = [], backward_steps.pipelined

  def spy(body, carry, fresh, *, asynchronous, a_smem=None):
    seen.append(asynchronous)
    return pipelined(body, carry, fresh, asynchronous=asynchronous, a_smem=a_smem)

  monkeypatch.setattr(backward_steps, "pipelined", spy)
  from jflash.kernels.mosaic_gpu import backward
  from jflash.masks import MaskSpec
  from jflash.scores import ScoreMod
  q = jax.ShapeDtypeStruct((1, t, 2, h), BF16)
  rows = jax.ShapeDtypeStruct((1, t, 2), jnp.float32)
  kernels = functools.partial(backward.backward, scale=h ** -0.5, score_mod=ScoreMod(),
                              spec=MaskSpec(q_len=t, kv_len=t, is_causal=False),
                              config=config)
  jax.jit(kernels).trace(q, q, q, rows, rows, q).lower(lowering_platforms=("cuda",))
  return set(seen)


@pytest.mark.parametrize("h,fused,overlap,expected", [
    (128, False, None, {True}),    # the default: 64 x 64 tiles overlap in both kernels
    (128, False, False, {False}),
    (128, True, None, {False}),    # the fused kernel overlaps at H = 64 only by default
    (128, True, True, {True}),
    (64, False, True, {True}),     # also H = 64's 128-query dK/dV and 64 x 128 dQ tiles
])
def test_backward_overlap_config(h, fused, overlap, expected, monkeypatch):
  """MosaicGpuConfig.bwd_overlap decides the backward kernels' asynchronous step (None:
  the measured rule); True past H = 128 and a non-bool are refused."""
  import dataclasses
  from jflash.kernels.mosaic_gpu.config import default_config
  config = dataclasses.replace(default_config(h, False, 2048), bwd_fused=fused,
                               bwd_overlap=overlap)
  if h == 64:
    config = dataclasses.replace(config, bwd_block_q=128, bwd_dq_block_kv=128)
  assert _backward_steps(h, 2048, config, monkeypatch) == expected
  if h == 128 and overlap:
    with pytest.raises(ValueError, match="bwd_overlap=True.*head dims <= 128, not 192"):
      jflash.attention(*random_inputs(0, 1, 128, 128, 2, 1, 192, BF16)[:3],
                       implementation="mosaic_gpu", interpret=not ON_GPU,
                       config=jflash.MosaicGpuConfig(block_kv=64, bwd_overlap=True))
    with pytest.raises(ValueError, match="bwd_overlap=1 must be None or a bool"):
      jflash.MosaicGpuConfig(bwd_overlap=1)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("name", ["full-gqa-ragged", "lengths-offset-causal",
                                  "causal-h96-two-ctas", "full-h128-gqa",
                                  "segments-h128-lengths"])
@pytest.mark.parametrize("fused", [False, True])
def test_backward_overlap_forced_native(name, fused):
  """bwd_overlap=True: the asynchronous step in every backward kernel (also H = 64's
  128-query tiles and the fused kernel at H = 128, which the default does not pick),
  natively (the interpretable form has no such step), on cases with H = 64, 96 and 128:
  GQA with ragged T and S, runtime offsets and lengths, f16, packing."""
  import dataclasses
  from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
  case = {**CASES, **GPU_CASES}[name]
  if fused:
    _check_fused(case, bwd_overlap=True)
    return
  _, t, _, _, _, h, _, kwargs = case
  config = default_config(kernel_head_dim(h), kwargs.get("is_causal", False), t)
  _check(case, config=dataclasses.replace(config, bwd_overlap=True))


@needs_hopper
def test_default_backward_by_determinism():
  """Without a config, deterministic=False takes the fused backward (no dQ kernel) where
  it measured faster, H <= 64 with causal T > 4k or non-causal T >= 2k, and the two
  kernels elsewhere; True never takes it. (Traced only: the kernels are tested above.)"""
  def kernels(t, h, deterministic, **kwargs):
    q, k, v, do = random_inputs(0, 1, t, t, 2, 2, h, BF16)
    grads = lambda q, k, v, do: jax.vjp(lambda *x: jflash.attention(
        *x, implementation="mosaic_gpu", interpret=not ON_GPU, deterministic=deterministic,
        **kwargs), q, k, v)[1](do)
    text = str(jax.make_jaxpr(grads)(q, k, v, do))
    return {name for name in ("jflash_mgpu_bwd_dkv", "jflash_mgpu_bwd_dq") if name in text}
  fused, two = {"jflash_mgpu_bwd_dkv"}, {"jflash_mgpu_bwd_dkv", "jflash_mgpu_bwd_dq"}
  assert kernels(4160, 64, False) == fused
  assert kernels(2048, 64, False) == fused
  assert kernels(2000, 64, False) == two
  assert kernels(4160, 48, False, is_causal=True) == fused  # H padded to 64
  assert kernels(4160, 64, True) == two
  assert kernels(4096, 64, False, is_causal=True) == two
  assert kernels(4160, 128, False) == two


@pytest.mark.parametrize("rows,heads,batch,group", [
    (5, 3, 2, 4), (4, 2, 3, 6), (3, 4, 1, 1), (6, 2, 2, None)])
def test_causal_work_order(rows, heads, batch, group):
  """Causal work items: every (row, head, batch) once; sections of `group` (batch, head)
  pairs one after the other (the last may be smaller); in each, the longest (last)
  rows first."""
  from jflash.kernels.mosaic_gpu.common import work_item
  order = jax.vmap(lambda w: jnp.stack(work_item(
      w, rows=rows, heads=heads, batch=batch, row_major=True, reverse=True, group=group)))(
          jnp.arange(rows * heads * batch, dtype=jnp.int32))
  row, head, b = np.asarray(order).T
  assert sorted(zip(row, head, b)) == sorted(
      (r, h, bb) for r in range(rows) for h in range(heads) for bb in range(batch))
  section = (b * heads + head) // (group or heads * batch)
  assert np.all(np.diff(section) >= 0)
  for s in np.unique(section):
    assert np.all(np.diff(row[section == s]) <= 0)


@pytest.mark.parametrize("pairs,rows,ctas", [(96, 16, 132), (384, 16, 132), (192, 8, 132),
                                             (256, 16, 132)])
def test_causal_sections_balance_the_persistent_deal(pairs, rows, ctas):
  """The kernels' own deal (work_items, work_item; vmapped over the CTAs) gives each
  CTA the work deal_imbalance says, and l2_group(..., ctas) picks sections that balance
  it where the L2 fit alone does not (96 pairs of 16 rows: the gpt2-small LM)."""
  from jflash.kernels.mosaic_gpu import common
  bytes_per_pair = 2 * rows * 128 * 64 * 2  # K and V of 128-key blocks, H=64, bf16

  def work(group):
    def per_cta(_):
      count, item = common.work_items(pairs * rows)
      def add(k, total):
        row, _, _ = common.work_item(item(k), rows=rows, heads=pairs, batch=1,
                                     row_major=True, reverse=True, group=group)
        return total + jnp.where(k < count, row + 1, 0)
      return lax.fori_loop(0, pairs * rows // ctas + 1, add, jnp.int32(0))
    load = np.asarray(jax.vmap(per_cta, axis_name="cta")(jnp.arange(ctas)))
    assert load.sum() == pairs * rows * (rows + 1) // 2
    return load.max() / load.mean()

  plain = common.l2_group(bytes_per_pair, pairs, rows)
  chosen = common.l2_group(bytes_per_pair, pairs, rows, ctas)
  for group in {plain, chosen}:
    assert work(group) == pytest.approx(common.deal_imbalance(pairs, rows, ctas, group))
  assert work(chosen) <= 1.03
  assert work(chosen) <= work(plain) - 0.02 or chosen == plain
  if pairs == 256:  # the papers' grid at T=2k: balanced with the L2 fit, which it keeps
    assert chosen == plain == 24


def test_named_barrier_ids():
  """The kernels' named barriers are consecutive blocks of ids 4-15 (Mosaic GPU uses 0-3);
  asking for more than the 12 free ones raises, naming the counts."""
  from jflash.kernels.mosaic_gpu.common import named_barrier_ids
  assert named_barrier_ids(4, 2, 2) == [4, 8, 10]
  assert named_barrier_ids(4, 4, 4) == [4, 8, 12]
  with pytest.raises(ValueError, match=r"13 named barriers asked for \(4, 5, 4\)"):
    named_barrier_ids(4, 5, 4)


def test_unsupported_variant_names_triton():
  q, k, v, _ = random_inputs(0, 1, 64, 64, 2, 1, 64, BF16)
  bias = jnp.zeros((1, 2, 64, 64), jnp.float32)
  with pytest.raises(NotImplementedError, match="bias.*implementation='triton'"):
    jflash.attention(q, k, v, bias=bias, implementation="mosaic_gpu", interpret=not HOPPER)
  with pytest.raises(NotImplementedError, match="float32.*implementation='triton'"):
    jflash.attention(*(x.astype(jnp.float32) for x in (q, k, v)), implementation="mosaic_gpu",
                     interpret=not HOPPER)


@pytest.mark.skipif(HOPPER, reason="checks the refusal off Hopper")
def test_needs_hopper():
  q, k, v, _ = random_inputs(0, 1, 64, 64, 2, 1, 64, BF16)
  with pytest.raises(NotImplementedError, match="Hopper GPU.*compute capability 9.0"):
    jflash.attention(q, k, v, implementation="mosaic_gpu")
