"""`jflash.attention`: validate, normalise, choose a backend, and one `jax.custom_vjp`."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math

import jax
import jax.experimental.pallas.fuser  # noqa: F401  (see below)
import jax.numpy as jnp

from jflash import tuning

# Importing the Pallas fuser registers a config value that is part of JAX's trace
# context. Pallas interpret mode imports it lazily, inside the first trace of a user's
# jitted function, so the second call saw a different context and retraced once.
# Importing it here, before any trace, keeps "same shapes -> no retrace" true.
from jflash.masks import MaskSpec

# implementation name -> module exposing forward(...) and backward(...).
_BACKENDS = {
    "triton": "jflash.kernels.triton",
    "xla": "jflash.reference",
}
_PALLAS_BACKENDS = ("triton",)
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
_MAX_HEAD_DIM = 256
_MIN_COMPUTE_CAPABILITY = (8, 0)


def attention(q, k, v, *, scale=None, is_causal=False, implementation=None, interpret=False,
              return_lse=False, config=None):
  r"""Exact softmax attention computed tile by tile (FlashAttention).

  Computes ``softmax(scale * q @ k^T) @ v`` per batch and query head without ever
  holding the T x S score matrix in memory: the FlashAttention-2 algorithm (Dao 2023;
  Dao et al. 2022), with fp32 accumulation and softmax statistics for every input
  dtype. Differentiable in q, k and v through a `jax.custom_vjp` whose backward pass
  recomputes the probabilities from the saved log-sum-exp; deterministic (no atomics).
  Works under `jit`, `grad`, `vmap` and `remat`.

  Shapes follow `jax.nn.dot_product_attention`:

  * B batch, T query length, S key/value length, N query heads, K key/value heads,
    H head dim.
  * q: [B, T, N, H]; k, v: [B, S, K, H]. Unbatched [T, N, H] and [S, K, H] also work.
  * N % K == 0: query head n reads key/value head n // (N // K) (grouped-query
    attention; K == 1 is multi-query attention). K/V are never repeated in memory.
  * Any T, S >= 1 and 1 <= H <= 256; T != S is allowed.

  Causal masking is aligned top-left, as in jax.nn: query i sees keys j <= i. For
  T=3, S=5::

      x . . . .
      x x . . .
      x x x . .

  Tiles above the diagonal are skipped; only tiles that straddle it are masked.

  Args:
    q: queries, [B, T, N, H] or [T, N, H]; bfloat16, float16 or float32.
    k: keys, [B, S, K, H] or [S, K, H]; same dtype as q.
    v: values, same shape and dtype as k.
    scale: multiplies q.k before the softmax; a positive finite Python float.
      Defaults to 1 / sqrt(H).
    is_causal: apply the causal mask above.
    implementation: ``"triton"`` (Pallas kernels lowered through Triton; NVIDIA GPUs of
      compute capability >= 8.0), ``"xla"`` (the same tiled algorithm in pure JAX; any
      device, memory linear in T and S), or None to pick the best one for the device
      the inputs live on (``"triton"`` on such a GPU, else ``"xla"``).
    interpret: run the Pallas kernels in Pallas interpret mode (for CPU testing).
      With ``implementation=None`` this selects ``"triton"``.
    return_lse: also return the log-sum-exp of the scaled scores.
    config: an optional :class:`jflash.AttentionConfig` of block sizes; by default
      :func:`jflash.default_config` picks one for (H, dtype, causal, GPU, S) for the
      Pallas kernels, and ``"xla"`` takes 512-position tiles
      (``jflash.tuning.XLA_DEFAULT_CONFIG``).

  Returns:
    out: [B, T, N, H] (or [T, N, H]) in q's dtype. A query that sees no key gives 0.
    lse (only if ``return_lse``): [B, T, N] (or [T, N]) float32, natural log,
    ``logsumexp_j(scale * q_i . k_j)`` over visible keys; -inf for a query that sees
    none. Differentiable too.

  Raises:
    ValueError: wrong ranks; batch, S or H mismatched between q, k, v; N % K != 0;
      T, S or H out of range; a dtype that is not bfloat16/float16/float32 or dtypes
      that differ; a scale that is not a positive finite number; an unknown
      implementation; a config that is not an AttentionConfig or does not fit the
      GPU's shared memory for this head dim.
    NotImplementedError: ``implementation="triton"`` on a device that cannot run it
      (no NVIDIA GPU of compute capability >= 8.0) without ``interpret=True``.

  Example::

    >>> q = jnp.ones((2, 128, 8, 64), jnp.bfloat16)
    >>> k = v = jnp.ones((2, 128, 2, 64), jnp.bfloat16)
    >>> jflash.attention(q, k, v, is_causal=True).shape
    (2, 128, 8, 64)
  """
  q, k, v = (jnp.asarray(x) if not isinstance(x, jax.Array) else x for x in (q, k, v))
  unbatched = _check_shapes(q, k, v)
  if unbatched:
    q, k, v = q[None], k[None], v[None]
  dtype = _check_dtypes(q, k, v)
  head_dim = q.shape[-1]
  scale = _check_scale(scale, head_dim)
  if not isinstance(is_causal, bool):
    raise ValueError(f"is_causal must be a bool, got {is_causal!r}")
  if not isinstance(interpret, bool):
    raise ValueError(f"interpret must be a bool, got {interpret!r}")
  if not isinstance(return_lse, bool):
    raise ValueError(f"return_lse must be a bool, got {return_lse!r}")
  backend, compute_capability = _choose_backend(implementation, interpret, q)
  if config is None and backend not in _PALLAS_BACKENDS:
    config = tuning.XLA_DEFAULT_CONFIG
  elif config is None:
    config = tuning.default_config(head_dim, dtype, is_causal,
                                   compute_capability or tuning.INTERPRET_COMPUTE_CAPABILITY,
                                   kv_len=k.shape[1])
  elif not isinstance(config, tuning.AttentionConfig):
    raise ValueError(f"config must be a jflash.AttentionConfig or None, got {config!r}")
  if backend in _PALLAS_BACKENDS:
    tuning.check_fits(config, head_dim, dtype,
                      compute_capability or tuning.INTERPRET_COMPUTE_CAPABILITY)

  static = _Static(backend=backend, scale=scale, spec=MaskSpec(q.shape[1], k.shape[1], is_causal),
                   config=config, interpret=interpret)
  out, lse = _attention(q, k, v, static)
  if unbatched:
    out, lse = out[0], lse[0]
  return (out, lse) if return_lse else out


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything about a call that is not an array: hashable, so jit caches on it."""

  backend: str
  scale: float
  spec: MaskSpec
  config: tuning.AttentionConfig
  interpret: bool

  def kernels(self):
    return importlib.import_module(_BACKENDS[self.backend])

  def options(self):
    options = dict(scale=self.scale, spec=self.spec, config=self.config)
    if self.backend in _PALLAS_BACKENDS:
      options["interpret"] = self.interpret
    return options


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, static: _Static):
  return static.kernels().forward(q, k, v, **static.options())


def _attention_fwd(q, k, v, static: _Static):
  out, lse = static.kernels().forward(q, k, v, **static.options())
  return (out, lse), (q, k, v, out, lse)


def _attention_bwd(static: _Static, residuals, cotangents):
  q, k, v, out, lse = residuals
  d_out, d_lse = cotangents
  # d lse_i / d s_ij = p_ij, so an lse cotangent folds into delta: dS = P (dP - delta + dlse).
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse
  return static.kernels().backward(q, k, v, lse, delta, d_out.astype(q.dtype), **static.options())


_flash.defvjp(_attention_fwd, _attention_bwd)
_attention = jax.jit(_flash, static_argnums=3)


def _check_shapes(q, k, v) -> bool:
  """Validates ranks and sizes; returns True for unbatched inputs."""
  shapes = f"q.shape={q.shape}, k.shape={k.shape}, v.shape={v.shape}"
  if not (q.ndim == k.ndim == v.ndim and q.ndim in (3, 4)):
    raise ValueError(
        f"q, k, v must all be rank 4 ([B, T, N, H], [B, S, K, H], [B, S, K, H]) or all "
        f"rank 3 (unbatched); got {shapes}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape [B, S, K, H]; got {shapes}")
  if q.shape[:-3] != k.shape[:-3]:
    raise ValueError(f"q, k, v must have the same batch size B; got {shapes}")
  t, n, h = q.shape[-3:]
  s, kv_heads, h_k = k.shape[-3:]
  if h != h_k:
    raise ValueError(f"q, k, v must have the same head dim H; got {shapes}")
  if not 1 <= h <= _MAX_HEAD_DIM:
    raise ValueError(f"head dim H={h} must be in [1, {_MAX_HEAD_DIM}]; got {shapes}")
  if t < 1 or s < 1:
    raise ValueError(f"sequence lengths T={t} and S={s} must be >= 1; got {shapes}")
  if kv_heads < 1 or n % kv_heads:
    raise ValueError(
        f"query heads N={n} must be a multiple of key/value heads K={kv_heads}; got {shapes}")
  if q.ndim == 4 and q.shape[0] < 1:
    raise ValueError(f"batch size B must be >= 1; got {shapes}")
  return q.ndim == 3


def _check_dtypes(q, k, v):
  dtypes = (q.dtype, k.dtype, v.dtype)
  if any(d not in _DTYPES for d in dtypes) or len(set(dtypes)) != 1:
    raise ValueError(
        "q, k, v must share one dtype among bfloat16, float16, float32; got "
        f"q.dtype={q.dtype}, k.dtype={k.dtype}, v.dtype={v.dtype}")
  return jnp.dtype(q.dtype)


def _check_scale(scale, head_dim: int) -> float:
  if scale is None:
    return 1.0 / math.sqrt(head_dim)
  if isinstance(scale, (str, bytes, bool)):
    raise ValueError(f"scale must be a positive finite number, got {scale!r}")
  try:
    value = float(scale)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"scale must be a Python float known at trace time, got {scale!r}") from None
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"scale must be a positive finite number, got {scale!r}")
  return value


def _choose_backend(implementation, interpret: bool, q):
  """Returns (backend name, GPU compute capability or None)."""
  if implementation is not None and implementation not in _BACKENDS:
    raise ValueError(
        f"implementation={implementation!r} is not one of {sorted(_BACKENDS)} or None")
  if interpret and implementation not in (None, *_PALLAS_BACKENDS):
    raise ValueError(
        f"interpret=True runs Pallas kernels; implementation={implementation!r} has none "
        f"(use one of {list(_PALLAS_BACKENDS)})")
  device = _device_of(q)
  capability = tuning.gpu_compute_capability(device)
  gpu_ok = capability is not None and capability >= _MIN_COMPUTE_CAPABILITY
  if interpret:
    return "triton", None
  if implementation is None:
    return ("triton", capability) if gpu_ok else ("xla", None)
  if implementation == "triton" and not gpu_ok:
    raise NotImplementedError(
        f"implementation='triton' needs an NVIDIA GPU of compute capability >= 8.0, but the "
        f"inputs are on {device.device_kind!r} ({device.platform}); use implementation='xla', "
        "or interpret=True to run the kernels in Pallas interpret mode")
  return implementation, capability if implementation == "triton" else None


def _device_of(x) -> jax.Device:
  if isinstance(x, jax.core.Tracer) or not hasattr(x, "devices"):
    return jax.devices()[0]
  try:
    return next(iter(x.devices()))
  except Exception:  # e.g. an abstract array with no placement
    return jax.devices()[0]
