"""The implementations the benchmark compares, how each is called, and why one cannot run.

jflash (``jflash:mosaic_gpu``, Hopper only; ``jflash:triton``, ``jflash:xla``), ``jax.nn.dot_product_attention``
(``cudnn``, ``xla``) and JAX's bundled Pallas kernels (``pallas_mha``: ``mha``;
``pallas_mgpu``: ``attention_mgpu``, Hopper only, run in fp16). A case an
implementation does not support raises :class:`Unsupported`; :func:`row_error` turns
that, or any other failure, into the text of a row.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

import jflash
from jflash.backends import nvidia_compute_capability
from jflash.bench.cases import Case

IMPLEMENTATIONS = ("jflash:mosaic_gpu", "jflash:triton", "jflash:xla", "cudnn", "xla",
                   "pallas_mha", "pallas_mgpu")
HOPPER_ONLY = ("jflash:mosaic_gpu", "pallas_mgpu")


class Unsupported(Exception):
  """The implementation does not run this case (the reason is the message)."""


def attention_fn(impl: str, case: Case, config=None):
  """A function (q, k, v) -> out for `impl` on `case`; raises Unsupported if it cannot.

  `config` goes to jflash only, and must be the named backend's type (``jflash:triton``:
  a :class:`jflash.TritonConfig`; ``jflash:xla``: a :class:`jflash.XlaConfig`).
  """
  scale = case.head_dim ** -0.5
  if impl.startswith("jflash"):
    backend = impl.split(":")[1] if ":" in impl else None
    return lambda q, k, v: jflash.attention(q, k, v, is_causal=case.is_causal,
                                            implementation=backend, config=config)
  if impl in ("cudnn", "xla"):
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=case.is_causal, implementation=impl)
  if impl == "pallas_mha":
    if case.kv_heads != case.heads:
      raise Unsupported("mha has no GQA (needs K == N)")
    if case.seq_len % 128:
      raise Unsupported("mha needs T to be a multiple of its 128 block")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      from jax.experimental.pallas.ops.gpu import attention as mha  # pylint: disable=g-import-not-at-top
    return lambda q, k, v: mha.mha(q, k, v, segment_ids=None, sm_scale=scale,
                                   causal=case.is_causal)
  if impl == "pallas_mgpu":
    if nvidia_compute_capability(jax.devices()[0]) != (9, 0):
      raise Unsupported("attention_mgpu needs a Hopper (sm_90) GPU")
    if case.head_dim % 64 or case.seq_len % 128:
      raise Unsupported("attention_mgpu needs H % 64 == 0 and T % 128 == 0")
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu  # pylint: disable=g-import-not-at-top
    block = 64 if case.head_dim > 128 else 128
    mgpu_config = mgpu.TuningConfig(block_q=64, block_kv=block, max_concurrent_steps=2,
                                    causal=case.is_causal, block_q_dkv=64, block_kv_dkv=64,
                                    block_q_dq=64, block_kv_dq=64)
    # attention_mgpu's bf16 path is not usable in practice (ANCHORS.md): run it in fp16.
    return lambda q, k, v: mgpu.attention(*(x.astype(jnp.float16) for x in (q, k, v)),
                                          mgpu_config).astype(q.dtype)
  raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")


def available_implementations() -> tuple[str, ...]:
  """What this device can run: everything on an sm80+ GPU, only XLA paths elsewhere."""
  capability = nvidia_compute_capability(jax.devices()[0])
  if capability is None:
    return ("jflash:xla", "xla")
  return tuple(i for i in IMPLEMENTATIONS if i not in HOPPER_ONLY or capability == (9, 0))


def legend(impl: str) -> str:
  """The implementation's name in tables and plots (attention_mgpu runs in fp16)."""
  return impl + " (fp16)" if impl == "pallas_mgpu" else impl


def row_error(e: Exception) -> str:
  """A row's `error` text for `e`: unsupported, out of memory, or failed, and why."""
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  if isinstance(e, Unsupported):
    return f"unsupported: {text}"
  if isinstance(e, NotImplementedError):
    return f"unsupported: {type(e).__name__}: {text[:160]}"
  if "Shared memory size limit exceeded" in text:
    return f"unsupported: its tiles need more shared memory than the GPU has ({text[:120]})"
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return f"out of memory: {text[:160]}"
  return f"failed: {type(e).__name__}: {text[:160]}"
