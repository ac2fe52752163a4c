"""Tuning: where each backend's config and heuristic live, and the sweeps' candidates.

Each backend owns its config type and default heuristic (``jflash/kernels/<name>/``);
this module re-exports the Triton backend's under the names of the first release
(``jflash.tuning.AttentionConfig``, ``jflash.tuning.default_config``, ...), and holds the
candidate tables that ``python -m jflash.bench --tune`` times.
"""

from __future__ import annotations

from jflash.backends import nvidia_compute_capability
from jflash.kernels.triton.config import (INTERPRET_COMPUTE_CAPABILITY, AttentionConfig,
                                          TritonConfig, check_fits, default_config,
                                          padded_head_dim, shared_memory_estimate,
                                          shared_memory_limit)
from jflash.kernels.xla.config import XlaConfig


# (major, minor) of an NVIDIA GPU, None for any other device (the first release's name).
gpu_compute_capability = nvidia_compute_capability


__all__ = ["AttentionConfig", "TritonConfig", "XlaConfig", "default_config", "check_fits",
           "padded_head_dim", "shared_memory_estimate", "shared_memory_limit",
           "gpu_compute_capability", "INTERPRET_COMPUTE_CAPABILITY"]


# ------------------------------------------------------------------------ sweep candidates
# The Triton block configs that `python -m jflash.bench --tune` (SWEEP) and `--tune fwd`
# (FORWARD_SWEEP) time, per padded head dim; default_config's choices come from them.

# Per padded head dim: (block_q, block_kv, warps, stages) for the forward, dK/dV and dQ
# kernels. Candidate i of each list runs in the same call.
SWEEP = {
    64: dict(
        fwd=[(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 4), (64, 64, 4, 4), (128, 128, 8, 3),
             (64, 32, 4, 4), (128, 64, 8, 2), (64, 64, 8, 3)],
        dkv=[(32, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 3), (32, 32, 4, 3),
             (64, 32, 4, 3), (32, 64, 4, 4), (64, 64, 8, 2)],
        dq=[(64, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 32, 8, 4),
            (64, 64, 8, 3), (128, 64, 8, 4), (32, 64, 4, 3)]),
    128: dict(
        fwd=[(128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3),
             (128, 32, 8, 4), (64, 64, 4, 4), (128, 128, 8, 2)],
        dkv=[(64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3), (64, 32, 4, 3),
             (32, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2)],
        dq=[(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4), (64, 32, 4, 3),
            (128, 32, 4, 3), (64, 64, 8, 3), (128, 128, 8, 2)]),
    256: dict(
        fwd=[(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 8, 3), (128, 32, 8, 2), (128, 64, 4, 2),
             (64, 32, 4, 2), (64, 64, 4, 3), (128, 16, 8, 4)],
        dkv=[(64, 32, 4, 2), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 4, 2), (64, 16, 4, 3),
             (64, 64, 4, 2), (32, 32, 4, 3), (128, 32, 8, 2)],
        dq=[(128, 64, 8, 1), (128, 32, 8, 2), (128, 32, 8, 3), (64, 16, 4, 3), (128, 16, 8, 3),
            (128, 64, 8, 2), (64, 32, 4, 3), (128, 32, 4, 2)]),
}

# Forward-only candidates for `--tune fwd` (more of them: a forward compiles in seconds).
FORWARD_SWEEP = {
    64: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 5), (128, 128, 4, 2), (128, 128, 4, 3),
         (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3),
         (64, 128, 4, 3), (256, 64, 16, 3), (256, 128, 16, 2)],
    128: [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2),
          (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (64, 128, 4, 3),
          (256, 64, 16, 3)],
    256: [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 128, 8, 1),
          (256, 64, 16, 2)],
}


def sweep_candidates(head_dim: int) -> list[tuple[tuple[int, int, int, int], ...]]:
  """SWEEP's candidates for `head_dim` (padded), as (fwd, dkv, dq) rows of one call each."""
  table = SWEEP[padded_head_dim(head_dim)]
  return list(zip(table["fwd"], table["dkv"], table["dq"]))


def sweep_config(fwd, dkv=None, dq=None) -> TritonConfig:
  """The TritonConfig of one candidate: (block_q, block_kv, warps, stages) per kernel.

  A kernel whose candidate is None keeps TritonConfig's default.
  """
  kwargs = dict(block_q=fwd[0], block_kv=fwd[1], num_warps=fwd[2], num_stages=fwd[3])
  for suffix, blocks in (("_dkv", dkv), ("_dq", dq)):
    if blocks:
      kwargs.update({f"block_q{suffix}": blocks[0], f"block_kv{suffix}": blocks[1],
                     f"num_warps{suffix}": blocks[2], f"num_stages{suffix}": blocks[3]})
  return TritonConfig(**kwargs)


__all__ += ["SWEEP", "FORWARD_SWEEP", "sweep_candidates", "sweep_config"]
