"""The ``"mosaic_gpu"`` backend: Pallas kernels lowered through Mosaic GPU (Hopper, sm90a).

FlashAttention-3's structure (Shah et al. 2024): warp-specialised TMA producer, two
consumer warpgroups taking turns on wgmma, a two-kernel deterministic backward (a fused
one with unordered dQ sums, ``MosaicGpuConfig.bwd_fused``, runs with deterministic=False
at H <= 64 for causal T > 4k and non-causal T >= 2k, or when asked for). It
serves bfloat16/float16 inputs with H <= 256 (64, 96, 128, 192, 256 natively, others
zero-padded), any T and S, GQA, causal, windows, ``q_offset`` (static or per batch
element), query and key lengths, segment ids and soft-cap; anything else goes to
``"triton"`` (with ``implementation=None``) or raises naming it.
The kernel modules are imported only when a call runs them.
"""

from __future__ import annotations

import jax.numpy as jnp

from jflash import backends
from jflash.kernels.mosaic_gpu.config import MosaicGpuConfig, check_fits, default_config, kernel_head_dim

COMPUTE_CAPABILITY = (9, 0)
MAX_HEAD_DIM = 256
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class MosaicGpuBackend(backends.Backend):
  """FlashAttention-3-style forward and deterministic two-kernel backward, Mosaic GPU."""

  name = "mosaic_gpu"
  config_type = MosaicGpuConfig
  interpretable = True
  # Its interpret mode (race detection on) is for testing the kernels themselves: it
  # runs only when named, and interpret=True with implementation=None stays "triton".
  implicit_interpret = False
  interpret_effects = True
  platforms = ("cuda",)

  def unavailable_reason(self, device):
    capability = backends.nvidia_compute_capability(device)
    if capability != COMPUTE_CAPABILITY:
      found = ("no NVIDIA GPU" if capability is None
               else f"compute capability {capability[0]}.{capability[1]}")
      return (f"it needs a Hopper GPU (compute capability 9.0: H100, H200, GH200), and the "
              f"call runs on {device.device_kind!r} ({found})")
    return None

  def unsupported_reason(self, problem):
    spec, mod = problem.spec, problem.score_mod
    if jnp.dtype(problem.dtype) not in DTYPES:
      return f"it takes bfloat16 or float16 inputs, not {jnp.dtype(problem.dtype).name}"
    if problem.head_dim > MAX_HEAD_DIM:
      return f"head dim H={problem.head_dim} > {MAX_HEAD_DIM}"
    missing = [name for name, used in (
        ("mask", spec.dense_mask), ("a mask object", spec.mask_object is not None),
        ("bias", mod.bias), ("alibi_slopes", mod.alibi),
        ("dropout", mod.dropout_rate > 0)) if used]
    if missing:
      return f"it does not implement {', '.join(missing)} yet"
    return None

  def default_config(self, problem, device):
    return default_config(kernel_head_dim(problem.head_dim), problem.is_causal, problem.q_len,
                          problem.deterministic)

  def check_config(self, config, problem, device):
    check_fits(config, problem.head_dim, problem.dtype, problem.deterministic)

  def forward(self, q, k, v, operands, *, scale, spec, score_mod, config, interpret):
    from jflash.kernels.mosaic_gpu import forward as kernels  # pylint: disable=g-import-not-at-top
    return kernels.forward(q, k, v, operands, scale=scale, spec=spec, score_mod=score_mod,
                           config=config, interpret=interpret)

  def backward(self, q, k, v, operands, lse, delta, do, *, scale, spec, score_mod, config,
               interpret, deterministic):
    # Deterministic unless config.bwd_fused, which check_config allows only without.
    del deterministic
    from jflash.kernels.mosaic_gpu import backward as kernels  # pylint: disable=g-import-not-at-top
    dq, dk, dv = kernels.backward(q, k, v, lse, delta, do, operands, scale=scale, spec=spec,
                                  score_mod=score_mod, config=config, interpret=interpret)
    return dq, dk, dv, None


BACKEND = MosaicGpuBackend()

__all__ = ["BACKEND", "MosaicGpuConfig"]
