"""`jflash.attention`: validate, normalise, choose a backend, and one `jax.custom_vjp`."""

from __future__ import annotations

import dataclasses
import functools

import jax
# Importing the Pallas fuser registers a config value that is part of JAX's trace
# context. Pallas interpret mode imports it lazily, inside the first trace of a user's
# jitted function, so the second call saw a different context and retraced once.
# Importing it here, before any trace, keeps "same shapes -> no retrace" true.
import jax.experimental.pallas.fuser  # noqa: F401
import jax.numpy as jnp
from jax import lax
from jax._src.interpreters import ad as _ad
from jax._src.interpreters import batching as _batching

from jflash import backends, checks, partitioning
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

MAX_HEAD_DIM = checks.MAX_HEAD_DIM


def attention(q, k, v, bias=None, mask=None, *, scale=None, is_causal=False,
              query_seq_lengths=None,
              key_value_seq_lengths=None, local_window_size=None, q_segment_ids=None,
              kv_segment_ids=None, q_offset=0, logits_soft_cap=None, alibi_slopes=None,
              dropout_rate=0.0, dropout_rng=None, deterministic=True, implementation=None,
              interpret=False, return_lse=False, config=None):
  r"""Exact softmax attention computed tile by tile (FlashAttention).

  Computes ``softmax(mask(mod(scale * q @ k^T))) @ v`` per batch and query head without
  ever holding the T x S score matrix in memory: the FlashAttention-2 algorithm (Dao 2023;
  Dao et al. 2022), with fp32 accumulation and softmax statistics for every input
  dtype. Differentiable in q, k, v and bias (reverse mode: `jax.grad`, `jax.vjp`,
  `jax.jacrev`) through a `jax.custom_vjp` whose backward pass recomputes the
  probabilities from the saved log-sum-exp; deterministic (no atomics). Works under
  `jit`, `grad`, `vmap` and `remat`, and with sharded inputs (below).

  Shapes follow `jax.nn.dot_product_attention`:

  * B batch, T query length, S key/value length, N query heads, K key/value heads,
    H head dim.
  * q: [B, T, N, H]; k, v: [B, S, K, H]. Unbatched [T, N, H] and [S, K, H] also work.
  * N % K == 0: query head n reads key/value head n // (N // K) (grouped-query
    attention; K == 1 is multi-query attention). K/V are never repeated in memory.
  * Any T, S >= 1 and 1 <= H <= 256; T != S is allowed.

  Masks. Query i sits at position ``i + q_offset`` and key j at position j. Query i
  sees key j when every mask given allows it (``x`` visible; T=4, S=6 below):

  * ``is_causal``: j <= i + q_offset. With q_offset = 0 this is jax.nn's top-left
    alignment; ``q_offset = S - T`` is the bottom-right alignment of a KV cache or
    chunked prefill (the last query sees every key).
  * ``local_window_size=(left, right)``: i + q_offset - left <= j <= i + q_offset +
    right (an int w means (w, w), a None side is unbounded), with or without
    ``is_causal``.
  * ``query_seq_lengths`` / ``key_value_seq_lengths``: i < query_seq_lengths[b] and
    j < key_value_seq_lengths[b]; padded query rows return 0 and get zero gradients,
    padded keys get zero dk, dv.
  * ``q_segment_ids`` / ``kv_segment_ids`` (packing several documents per row): a query
    sees only keys of its own segment id::

      is_causal       is_causal,       window (1, 1)    segment ids 0 0 1 1 | 0 0 1 1 2 2
                      q_offset=2
      x . . . . .     x x x . . .      x x . . . .      x x . . . .
      x x . . . .     x x x x . .      x x x . . .      x x . . . .
      x x x . . .     x x x x x .      . x x x . .      . . x x . .
      x x x x . .     x x x x x x      . . x x x .      . . x x . .

  * ``mask``: a boolean array broadcastable to [B, N, T, S] (as jax.nn): mask[b, n, i, j];
    or a static block-sparse mask object from `jflash.masks` (``Causal``, ``LocalWindow``,
    ``ChunkedCausal``, ``Strided``, ``GlobalTokens``, ``BlockLayout``, composed with ``&``
    and ``|``; on indices i, j, not positions): its nonzero tiles are listed once at trace
    time and only those are visited (block-sparse FlashAttention, Dao et al. 2022 Sec.
    3.3), forward and backward.

  Tiles that no query of a tile sees are skipped, not computed: the causal upper
  triangle, keys outside a window, padding, and (computed on device from the ids or the
  mask) tiles whose query and key segments cannot meet or whose mask is all False; only
  tiles that straddle a mask edge are masked (and read their tile of `mask`). A query
  that sees no key returns 0 with lse -inf and zero gradients.

  Score modifications, applied to ``s = scale * q.k`` in float32 before the mask (the
  kernels keep their plain inner loop when none is on):

  * ``bias``: s becomes ``s + bias[b, n, i, j]``; differentiable. dL/dbias is computed
    only when the bias is differentiated, and then costs a [B, N, T, S] float32 array
    (4 B N T S bytes, summed afterwards over the axes the bias broadcasts).
  * ``logits_soft_cap=c``: s becomes ``c * tanh(s / c)`` (Gemma 2), differentiated.
  * ``alibi_slopes``: then subtracts ``slope[b, n] * |i + q_offset - j|`` (ALiBi, Press
    et al. 2022, in FlashAttention-2's convention: after the soft-cap, no bias tensor).

  Dropout: with ``dropout_rate=r > 0`` each probability p[b, n, i, j] is kept with
  probability 1 - r and scaled by 1 / (1 - r) (inverted dropout on the attention
  weights; lse stays that of the undropped softmax). The keep mask is a counter-based
  hash of (``dropout_rng``, b, n, i, j) (:mod:`jflash.dropout`) computed inside the
  kernels, forward and backward, so it is never stored: the same key gives bitwise the
  same mask on every backend and any sharding over batch and heads.

  Which backend runs: a named `implementation` runs, or raises. With None, the first
  backend that can run on the device the call runs on and supports the case: for
  concrete input arrays, the device they live on; under `jit` (where inputs are
  tracers and their placement is decided later), the platform XLA compiles for, via
  `jax.lax.platform_dependent`: on a CUDA GPU the backend chosen for the process's
  default GPU (``"mosaic_gpu"`` on a Hopper GPU for the calls it serves, otherwise
  ``"triton"`` on compute capability >= 8.0), ``"xla"`` on any other platform (CPU,
  TPU, ROCm). A `config` picks the backend whose config type
  it is.

  Sharding: under `jit`, q, k, v sharded (`NamedSharding`) over the batch axis and/or
  the head axis run per shard with no communication, forward and backward; heads shard
  by key/value-head groups (the head axis's mesh size must divide K as well as N). A
  sharded sequence axis (T or S), a sharded head dim, or a head sharding that does not
  divide K is gathered before the call (a documented all-gather; jflash has no context
  parallelism yet), and the outputs are sharded like q.

  Limits: `scale` is static (a concrete number; a traced scale raises). Forward-mode
  differentiation (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and second-order
  derivatives (grad of grad, `jax.hessian`) are not supported and raise
  NotImplementedError (under a `jit` inside `jax.jvp`, JAX raises its own "can't apply
  forward-mode autodiff (jvp) to a custom_vjp function" when compiling).

  Args:
    q: queries, [B, T, N, H] or [T, N, H]; bfloat16, float16 or float32.
    k: keys, [B, S, K, H] or [S, K, H]; same dtype as q.
    v: values, same shape and dtype as k.
    bias: None, or a float array broadcastable to [B, N, T, S] ([N, T, S] unbatched),
      added to the scaled logits. Runtime data; differentiable. Its T and S axes are
      broadcast in memory (T x S per batch and head it has).
    mask: None; a boolean array broadcastable to [B, N, T, S] ([N, T, S] unbatched),
      True where a query may attend to a key (runtime data; held as int8 T x S per batch
      and head it has); or a `jflash.masks.Mask` object (static).
    scale: multiplies q.k before the softmax: a positive finite number known at trace
      time (a Python or NumPy scalar, or a concrete size-1 array). Defaults to
      1 / sqrt(H).
    is_causal: apply the causal mask above.
    query_seq_lengths: None, or integer [B] (a scalar when unbatched): queries at index
      >= the length are padding. Runtime data (may be traced).
    key_value_seq_lengths: None, or integer [B]: keys at index >= the length are
      padding. Runtime data.
    local_window_size: None, an int >= 0, or a (left, right) pair of ints >= 0 or None;
      static.
    q_segment_ids: None, or integer [B, T] ([T] unbatched) segment ids. Runtime data.
    kv_segment_ids: None, or integer [B, S]; defaults to `q_segment_ids` (then T must
      equal S). Needs `q_segment_ids`.
    q_offset: the queries' position offset: a Python int (compiled in), or an integer
      array of shape [B] or a scalar (runtime data, may be traced: a new value does not
      recompile).
    logits_soft_cap: None, or a positive finite number known at trace time.
    alibi_slopes: None, or float [N] or [B, N] ALiBi slopes (runtime data; not
      differentiated).
    dropout_rate: a float in [0, 1) known at trace time (rounded to a multiple of
      2^-32); 0 turns dropout off.
    dropout_rng: a JAX PRNG key (`jax.random.key` or `jax.random.PRNGKey`), needed when
      dropout_rate > 0; may be traced.
    deterministic: True asks for gradients that are bitwise identical run to run; False
      lets a backend use unordered (atomic) reductions where that is faster. The
      ``"triton"`` and ``"xla"`` backends are deterministic either way: their backward
      is a dK/dV pass and a dQ pass that each accumulate in a fixed order, no atomics.
      So is ``"mosaic_gpu"`` with True. With False it runs one fused kernel whose dQ
      is an unordered sum of fp32 reduce-adds, as FlashAttention-3's backward does,
      where that measured faster on an H200 (H <= 64: causal T > 4k, non-causal
      T >= 2k; see the README), or
      when ``config=jflash.MosaicGpuConfig(..., bwd_fused=True)`` asks for it (which
      with deterministic=True raises ValueError).
    implementation: ``"mosaic_gpu"`` (Pallas kernels lowered through Mosaic GPU, after
      FlashAttention-3, Shah et al. 2024; Hopper GPUs, bfloat16/float16; causal,
      windows, q_offset, lengths, segment ids and soft-cap, not yet masks, bias, ALiBi
      or dropout), ``"triton"``
      (Pallas kernels lowered through Triton; NVIDIA GPUs of compute capability >= 8.0;
      every variant), ``"xla"`` (the same tiled algorithm in pure JAX; any device,
      memory linear in T and S), or None to choose as described above.
    interpret: run the Pallas kernels in Pallas interpret mode (for CPU testing).
      With ``implementation=None`` this selects ``"triton"``; with ``"mosaic_gpu"`` it
      runs Mosaic GPU's interpret mode with race detection (a detected race raises
      RuntimeError), unpartitioned.
    return_lse: also return the log-sum-exp of the scaled scores.
    config: the chosen backend's config: a :class:`jflash.MosaicGpuConfig` for
      ``"mosaic_gpu"``, a :class:`jflash.TritonConfig` (also called
      ``jflash.AttentionConfig``) for ``"triton"``, a :class:`jflash.XlaConfig` for
      ``"xla"``; None takes the backend's default (``jflash.default_config`` for
      Triton, tuned on an H200).

  Returns:
    out: [B, T, N, H] (or [T, N, H]) in q's dtype. A query that sees no key gives 0.
    lse (only if ``return_lse``): [B, T, N] (or [T, N]) float32, natural log,
    ``logsumexp_j(scale * q_i . k_j)`` over visible keys; -inf for a query that sees
    none. Differentiable too.

  Raises:
    ValueError: wrong ranks; batch, S or H mismatched between q, k, v; N % K != 0;
      T, S or H out of range; a dtype that is not bfloat16/float16/float32 or dtypes
      that differ; a scale that is not a positive finite scalar or is traced; segment
      ids, lengths, q_offset, ALiBi slopes, bias or mask of the wrong shape or dtype, a
      mask object that does not fit T x S (e.g. a BlockLayout of another shape); kv_segment_ids
      without q_segment_ids, or q_segment_ids alone with T != S; a negative or malformed
      window; a soft-cap that is not a positive finite number; a dropout_rate outside
      [0, 1) or dropout without a dropout_rng, or one that is not a PRNG key; an unknown
      implementation; ``interpret=True`` with a backend that has no interpret mode; a
      config of the wrong type, or one that does not fit the GPU's shared memory.
    NotImplementedError: the named implementation cannot serve the call on this device
      (the message names one that can); forward-mode or second-order differentiation.

  Example::

    >>> q = jnp.ones((2, 128, 8, 64), jnp.bfloat16)
    >>> k = v = jnp.ones((2, 128, 2, 64), jnp.bfloat16)
    >>> jflash.attention(q, k, v, is_causal=True).shape
    (2, 128, 8, 64)
  """
  q, k, v = (x if isinstance(x, jax.Array) else jnp.asarray(x) for x in (q, k, v))
  unbatched = checks.check_shapes(q, k, v)
  if unbatched:
    q, k, v = q[None], k[None], v[None]
  dtype = checks.check_dtypes(q, k, v)
  b, t, n, h = q.shape
  s_len = k.shape[1]
  scale = checks.check_scale(scale, h)
  for name, value in (("is_causal", is_causal), ("interpret", interpret),
                      ("return_lse", return_lse), ("deterministic", deterministic)):
    if not isinstance(value, bool):
      raise ValueError(f"{name} must be a bool, got {value!r}")
  if implementation is not None:
    backends.get(implementation)  # ValueError for an unknown name
  _refuse_forward_mode(q, k, v)
  batched = functools.partial(checks.batched_operand, unbatched=unbatched, batch=b)
  window = checks.check_window(local_window_size)
  static_offset, q_offset = checks.check_offset(q_offset, batched)
  q_segment_ids, kv_segment_ids = checks.check_segment_ids(q_segment_ids, kv_segment_ids, t,
                                                            s_len, batched)
  scores_shape = dict(unbatched=unbatched, batch=b, num_heads=n, q_len=t, kv_len=s_len)
  dense_mask, mask_object = checks.check_mask(mask, **scores_shape)
  dropout_rate, seeds = checks.check_dropout(dropout_rate, dropout_rng, b, n)
  operands = backends.Operands(
      dropout_seeds=seeds,
      bias=checks.check_bias(bias, **scores_shape),
      mask=dense_mask,
      q_offset=q_offset,
      q_lengths=batched("query_seq_lengths", query_seq_lengths, (), jnp.integer),
      kv_lengths=batched("key_value_seq_lengths", key_value_seq_lengths, (), jnp.integer),
      q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
      alibi_slopes=checks.check_alibi(alibi_slopes, n, batched))
  spec = MaskSpec(t, s_len, is_causal, window=window, q_offset=static_offset,
                  dynamic_offset=q_offset is not None,
                  q_lengths=operands.q_lengths is not None,
                  kv_lengths=operands.kv_lengths is not None,
                  segment_ids=q_segment_ids is not None,
                  dense_mask=operands.mask is not None, mask_object=mask_object)
  score_mod = ScoreMod(soft_cap=checks.check_soft_cap(logits_soft_cap),
                       alibi=operands.alibi_slopes is not None, bias=operands.bias is not None,
                       dropout_rate=dropout_rate)
  score_bytes = ((0 if operands.bias is None else operands.bias.dtype.itemsize)
                 + (operands.mask is not None or mask_object is not None))
  problem = backends.Problem(b, t, s_len, n, k.shape[2], h, dtype, spec, score_mod,
                             int(score_bytes), deterministic)
  static = _Static(plans=_plans(implementation, interpret, config, problem, (q, k, v)),
                   scale=scale, spec=spec, score_mod=score_mod)
  out, lse = _attention(q, k, v, operands, static)
  if unbatched:
    out, lse = out[0], lse[0]
  return (out, lse) if return_lse else out


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything about a call that is not an array: hashable, so jit caches on it.

  `plans` is ((platforms, plan), ...): the plan for each platform the call may be
  compiled for, `platforms` None for "any other" (see `_plans`).
  """

  plans: tuple
  scale: float
  spec: MaskSpec
  score_mod: ScoreMod

  def kernels(self):
    return [(platforms, partitioning.Kernel(plan, self.scale, self.spec, self.score_mod))
            for platforms, plan in self.plans]


def _plans(implementation, interpret, config, problem, arrays):
  """The backend plan(s) of a call; more than one only for a traced call (see below)."""
  if interpret:
    return ((None, backends.plan(implementation, problem, None, interpret=True,
                                 config=config)),)
  device = _placement(arrays)
  if device is not None or implementation is not None:
    device = device or _default_device()
    return ((None, backends.plan(implementation, problem, device, config=config)),)
  # Traced inputs: where they will live is decided when XLA compiles. Plan for the
  # default device, and, if that backend runs on some platforms only, let
  # lax.platform_dependent pick a portable backend on every other platform.
  first = backends.plan(None, problem, _default_device(), config=config)
  platforms = backends.get(first.backend).platforms
  if platforms is None or config is not None:
    return ((None, first),)
  portable = next(name for name in backends.PRIORITY if backends.get(name).platforms is None)
  return ((platforms, first),
          (None, backends.plan(portable, problem, jax.devices("cpu")[0])))


def _placement(arrays) -> jax.Device | None:
  """A device the concrete input arrays live on; None if any is traced."""
  devices = set()
  for x in arrays:
    if isinstance(x, jax.core.Tracer):
      return None
    devices |= set(x.sharding.device_set)
  return min(devices, key=lambda d: d.id)


def _default_device() -> jax.Device:
  """JAX's default device (`jax.default_device` if set, a device or a platform name)."""
  device = jax.config.jax_default_device
  if isinstance(device, jax.Device):
    return device
  return jax.devices(device)[0] if isinstance(device, str) else jax.devices()[0]


def _run(kernels, fn, *args):
  """`fn(kernel, *args)` with the kernel of the platform XLA compiles for."""
  if len(kernels) == 1:
    return fn(kernels[0][1], *args)
  branches = {}
  for platforms, kernel in kernels:
    for platform in platforms or ("default",):
      branches[platform] = functools.partial(fn, kernel)
  return lax.platform_dependent(*args, **branches)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, operands, static: _Static):
  return _forward(static, q, k, v, operands)


def _flash_fwd(q, k, v, operands, static: _Static):
  # symbolic_zeros=True: every array comes wrapped with whether it is differentiated, so
  # dL/dbias (a T x S array) is computed only when the bias is.
  bias_grad = operands.bias is not None and operands.bias.perturbed
  q, k, v, operands = jax.tree.map(lambda x: x.value, (q, k, v, operands))
  out, lse = _forward(static, q, k, v, operands)
  return (out, lse), (q, k, v, operands, out, lse, () if bias_grad else None)


def _flash_bwd(static: _Static, residuals, cotangents):
  q, k, v, operands, out, lse, bias_grad = residuals
  d_out, d_lse = (_instantiate(x) for x in cotangents)
  # d lse_i / d s_ij = p_ij, so an lse cotangent folds into delta: dS = P (dP - delta + dlse).
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse
  # A row that sees no key has lse = -inf; +inf makes its recomputed P exactly 0.
  lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
  if bias_grad is not None:
    static = dataclasses.replace(
        static, score_mod=dataclasses.replace(static.score_mod, bias_grad=True))
  dq, dk, dv, dbias = _backward(static, q, k, v, operands, lse, delta, d_out.astype(q.dtype))
  # Operands other than the bias are not differentiated (None: a zero cotangent).
  d_operands = backends.Operands(
      bias=None if dbias is None else dbias.astype(operands.bias.dtype))
  return dq, dk, dv, d_operands


def _instantiate(x):
  """A cotangent as an array (zeros for a symbolic zero)."""
  if isinstance(x, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(x.shape, x.dtype)
  return x


_flash.defvjp(_flash_fwd, _flash_bwd, symbolic_zeros=True)
_attention = jax.jit(_flash, static_argnums=4)


# The kernels have no derivative rules of their own. Differentiating the custom_vjp's
# forward or backward again (grad of grad) reaches these rules, which say so clearly.
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward(static: _Static, q, k, v, operands):
  return _run(static.kernels(), partitioning.forward, q, k, v, operands)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _backward(static: _Static, q, k, v, operands, lse, delta, do):
  return _run(static.kernels(), partitioning.backward, q, k, v, operands, lse, delta, do)


def _no_second_order(static, primals, tangents):
  del static, primals, tangents
  raise NotImplementedError(
      "jflash.attention has no second-order derivatives (grad of grad, jax.hessian): "
      "its forward and backward passes are kernels with no derivative rules of their own. "
      "Differentiate once (jax.grad, jax.vjp), or use jax.nn.dot_product_attention "
      "where higher derivatives are needed.")


_forward.defjvp(_no_second_order)
_backward.defjvp(_no_second_order)


def _refuse_forward_mode(*arrays):
  """NotImplementedError if an input carries a forward-mode (JVP) tangent."""
  if any(_has_forward_tangent(x) for x in arrays):
    raise NotImplementedError(
        "jflash.attention does not support forward-mode differentiation (jax.jvp, "
        "jax.jacfwd, jax.linearize, and jax.hessian, which uses jax.jacfwd): its "
        "derivative is a reverse-mode rule (jax.custom_vjp) over the FlashAttention "
        "backward kernels. Use jax.grad, jax.vjp or jax.jacrev; for forward mode use "
        "jax.nn.dot_product_attention.")


def _has_forward_tangent(x) -> bool:
  # JAX internals (pinned to jax 0.11.x): reverse mode traces with a LinearizeTracer
  # whose trace has is_vjp=True; jax.jvp with a JVPTracer; jax.linearize with is_vjp=False.
  while True:
    if isinstance(x, _ad.JVPTracer):
      return True
    if isinstance(x, _ad.LinearizeTracer):
      if not x._trace.is_vjp:  # pylint: disable=protected-access
        return True
      x = x.primal
    elif isinstance(x, _batching.BatchTracer):
      x = x.val
    else:
      return False
