"""The ``"triton"`` backend: Pallas kernels lowered through Triton (NVIDIA sm80+).

JAX 0.11 deprecates Pallas's Triton lowering (every call warns); it still works in
0.11.x, and the Mosaic GPU backend is the long-term path on Hopper. The kernel modules
(`forward`, `backward`) are imported only when a call runs them.
"""

from __future__ import annotations

from jflash import backends
from jflash.kernels.triton.config import (INTERPRET_COMPUTE_CAPABILITY, AttentionConfig,
                                          TritonConfig, check_fits, default_config)

MIN_COMPUTE_CAPABILITY = (8, 0)
MAX_HEAD_DIM = 256


class TritonBackend(backends.Backend):
  """FlashAttention-2 forward and deterministic two-kernel backward, Triton lowering."""

  name = "triton"
  config_type = TritonConfig
  interpretable = True
  platforms = ("cuda",)

  def unavailable_reason(self, device):
    capability = backends.nvidia_compute_capability(device)
    if capability is None:
      return (f"it needs an NVIDIA GPU of compute capability >= 8.0, and the call runs on "
              f"{device.device_kind!r} ({device.platform})")
    if capability < MIN_COMPUTE_CAPABILITY:
      return (f"it needs compute capability >= 8.0, and {device.device_kind!r} has "
              f"{capability[0]}.{capability[1]}")
    return None

  def unsupported_reason(self, problem):
    if problem.head_dim > MAX_HEAD_DIM:
      return f"head dim H={problem.head_dim} > {MAX_HEAD_DIM}"
    return None

  def default_config(self, problem, device):
    return default_config(problem.head_dim, problem.dtype, problem.is_causal,
                          _capability(device), kv_len=problem.kv_len,
                          score_bytes=problem.score_bytes)

  def check_config(self, config, problem, device):
    check_fits(config, problem.head_dim, problem.dtype, _capability(device),
               score_bytes=problem.score_bytes)

  def forward(self, q, k, v, operands, *, scale, spec, score_mod, config, interpret):
    from jflash.kernels.triton import forward as kernels  # pylint: disable=g-import-not-at-top
    return kernels.forward(q, k, v, operands, scale=scale, spec=spec, score_mod=score_mod,
                           config=config, interpret=interpret)

  def backward(self, q, k, v, operands, lse, delta, do, *, scale, spec, score_mod, config,
               interpret, deterministic):
    del deterministic  # deterministic either way: no atomics
    from jflash.kernels.triton import backward as kernels  # pylint: disable=g-import-not-at-top
    return kernels.backward(q, k, v, operands, lse, delta, do, scale=scale, spec=spec,
                            score_mod=score_mod, config=config, interpret=interpret)


def _capability(device) -> tuple[int, int]:
  """The GPU's compute capability; interpret mode (device None) checks against Hopper."""
  if device is None:
    return INTERPRET_COMPUTE_CAPABILITY
  return backends.nvidia_compute_capability(device) or INTERPRET_COMPUTE_CAPABILITY


BACKEND = TritonBackend()

__all__ = ["BACKEND", "TritonConfig", "AttentionConfig", "default_config", "check_fits"]
