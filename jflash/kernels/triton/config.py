"""The Triton backend's config: block sizes and launch parameters, and per-GPU defaults.

A :class:`TritonConfig` (also exported as ``jflash.AttentionConfig``, its first name) is
a frozen, hashable dataclass, so it can be a static
argument of ``jax.jit`` and a second call with an equal config does not retrace. It
checks its own fields on construction; whether it fits a given head dim on a given GPU
is checked by :func:`check_fits` when a call knows both.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

# Dynamic shared memory one thread block may use, in bytes, by compute capability.
_SHARED_MEMORY_BYTES = {
    (8, 0): 163 * 1024,
    (8, 6): 99 * 1024,
    (8, 7): 163 * 1024,
    (8, 9): 99 * 1024,
    (9, 0): 227 * 1024,
    (10, 0): 227 * 1024,
    (12, 0): 99 * 1024,
}
# What interpret mode (no GPU) checks configs against: a Hopper GPU.
INTERPRET_COMPUTE_CAPABILITY = (9, 0)

_BLOCK_FIELDS = ("block_q", "block_kv", "block_q_dkv", "block_kv_dkv", "block_q_dq", "block_kv_dq")
_WARP_FIELDS = ("num_warps", "num_warps_dkv", "num_warps_dq")
_STAGE_FIELDS = ("num_stages", "num_stages_dkv", "num_stages_dq")


@dataclasses.dataclass(frozen=True)
class TritonConfig:
  """Tile sizes and launch parameters of the forward and backward kernels.

  Block sizes count sequence positions (rows of q, k, v). Every block size must be a
  power of two in [16, 512]; a block larger than its sequence is shrunk to fit at call
  time. The forward kernel tiles queries by ``block_q`` and streams keys/values by
  ``block_kv`` (FlashAttention-2 loop order). The dK/dV kernel holds ``block_kv_dkv``
  keys and streams queries by ``block_q_dkv``; the dQ kernel holds ``block_q_dq``
  queries and streams keys by ``block_kv_dq``. ``num_warps*`` and ``num_stages*`` are
  the Triton launch parameters (warps per program, software-pipelining depth) of the
  forward, dK/dV and dQ kernels; the ``"xla"`` implementation uses only the block sizes.

  Raises:
    ValueError: a block size that is not a power of two in [16, 512], a warp count not
      in {1, 2, 4, 8, 16}, or a stage count not in [1, 8], naming the field and value.
  """

  block_q: int = 128
  block_kv: int = 64
  num_warps: int = 4
  num_stages: int = 2
  block_q_dkv: int = 64
  block_kv_dkv: int = 64
  num_warps_dkv: int = 4
  num_stages_dkv: int = 2
  block_q_dq: int = 64
  block_kv_dq: int = 64
  num_warps_dq: int = 4
  num_stages_dq: int = 2

  def __post_init__(self):
    for name in _BLOCK_FIELDS:
      value = getattr(self, name)
      if not _is_int(value) or value < 16 or value > 512 or value & (value - 1):
        raise ValueError(f"TritonConfig.{name}={value!r} must be a power of two in [16, 512]")
    for name in _WARP_FIELDS:
      value = getattr(self, name)
      if not _is_int(value) or value not in (1, 2, 4, 8, 16):
        raise ValueError(f"TritonConfig.{name}={value!r} must be one of 1, 2, 4, 8, 16")
    for name in _STAGE_FIELDS:
      value = getattr(self, name)
      if not _is_int(value) or not 1 <= value <= 8:
        raise ValueError(f"TritonConfig.{name}={value!r} must be an integer in [1, 8]")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def padded_head_dim(head_dim: int) -> int:
  """Head dim the Triton tiles use: the next power of two, at least 16 (tensor-core K)."""
  return max(16, 1 << (head_dim - 1).bit_length())


def shared_memory_estimate(config: TritonConfig, head_dim: int, dtype,
                           score_bytes: int = 0) -> dict[str, int]:
  """Shared memory, in bytes, each Triton kernel needs for its pipelined tiles.

  A lower-bound estimate of what Triton allocates: the tile held for the whole program,
  ``num_stages`` buffers of each streamed tile, and one probability tile. `score_bytes`
  is the bytes per score of the tiles streamed with the scores (a bias's itemsize, 1 for
  a mask), also ``num_stages`` deep. Returns a dict ``{"forward": ..., "dkv": ...,
  "dq": ...}``.
  """
  h = padded_head_dim(head_dim)
  size = jnp.dtype(dtype).itemsize
  c = config
  return {
      "forward": size * (c.block_q * h + c.num_stages * 2 * c.block_kv * h)
                 + score_bytes * c.num_stages * c.block_q * c.block_kv,
      "dkv": size * (2 * c.block_kv_dkv * h + c.num_stages_dkv * 2 * c.block_q_dkv * h
                     + c.block_q_dkv * c.block_kv_dkv)
             + score_bytes * c.num_stages_dkv * c.block_q_dkv * c.block_kv_dkv,
      "dq": size * (2 * c.block_q_dq * h + c.num_stages_dq * 2 * c.block_kv_dq * h
                    + c.block_q_dq * c.block_kv_dq)
            + score_bytes * c.num_stages_dq * c.block_q_dq * c.block_kv_dq,
  }


def shared_memory_limit(compute_capability: tuple[int, int]) -> int:
  """Bytes of shared memory one program may use on a GPU of this compute capability."""
  if compute_capability in _SHARED_MEMORY_BYTES:
    return _SHARED_MEMORY_BYTES[compute_capability]
  return 99 * 1024  # the smallest limit among sm80+ parts


def check_fits(config: TritonConfig, head_dim: int, dtype, compute_capability: tuple[int, int],
               score_bytes: int = 0):
  """Raises ValueError if a kernel of `config` needs more shared memory than the GPU has.

  `score_bytes`: see :func:`shared_memory_estimate`.
  """
  limit = shared_memory_limit(compute_capability)
  for kernel, need in shared_memory_estimate(config, head_dim, dtype, score_bytes).items():
    if need > limit:
      raise ValueError(
          f"{config} does not fit: its {kernel} kernel needs at least {need} bytes of shared "
          f"memory for head dim {head_dim} in {jnp.dtype(dtype).name}, and a GPU of compute "
          f"capability {compute_capability[0]}.{compute_capability[1]} has {limit}. "
          "Use smaller blocks or fewer stages.")


@functools.lru_cache(maxsize=None)
def default_config(head_dim: int, dtype, is_causal: bool,
                   compute_capability: tuple[int, int] = INTERPRET_COMPUTE_CAPABILITY,
                   kv_len: int | None = None, score_bytes: int = 0) -> TritonConfig:
  """The block-size heuristic for the Triton kernels: a config for the case that fits.

  Args:
    head_dim: H, 1..256.
    dtype: the dtype of q, k, v (bfloat16, float16 or float32).
    is_causal: whether the mask is causal.
    compute_capability: (major, minor) of the GPU; defaults to Hopper (9, 0).
    kv_len: S, the number of keys each query row streams through (None: long).
    score_bytes: bytes per score of a bias and/or mask streamed with the scores (see
      :func:`shared_memory_estimate`); they cost shared memory, so fewer stages fit.

  Returns:
    A :class:`TritonConfig` that passes :func:`check_fits` on that GPU. The choices
    were measured on an H200 with ``python -m jflash.bench --tune`` (BUILD_NOTES.md,
    "Tuning log").
  """
  h = padded_head_dim(head_dim)
  wide = jnp.dtype(dtype).itemsize > 2
  s = 1 << 30 if kv_len is None else kv_len
  # Each kernel's (block_q, block_kv, num_warps, num_stages), from the H200 sweeps.
  # Forward: on short rows (few key tiles per program), 64x64 tiles with 4 warps let two
  # programs share an SM and overlap one's prologue/epilogue with the other's loop; causal
  # rows are half as long on average and waste less of the diagonal tile with small
  # tiles. Long rows stream best with 128x128 tiles. The backward kernels' choices by
  # length are measured, not derived (BUILD_NOTES.md, tuning step 7).
  if h <= 64:
    fwd = (64, 64, 4, 3) if s <= 2048 else (128, 128, 4, 3)
    dkv = (32, 64, 4, 3) if s <= 512 else (64, 64, 4, 3)
    dq = (64, 64, 4, 2)
  elif h <= 128:
    fwd = (64, 64, 4, 3) if s <= 512 or (is_causal and s <= 2048) else (128, 128, 8, 3)
    dkv = (32, 64, 4, 3) if s > 8192 else (64, 64, 4, 2)
    dq = (128, 32, 8, 3) if s <= 512 else (128, 64, 8, 3)
  else:
    fwd = (128, 64, 8, 2)
    dkv = (64, 32, 4, 2)
    dq = (64, 32, 4, 3) if is_causal else (128, 64, 8, 1)
  config = TritonConfig(
      *fwd, block_q_dkv=dkv[0], block_kv_dkv=dkv[1], num_warps_dkv=dkv[2],
      num_stages_dkv=dkv[3], block_q_dq=dq[0], block_kv_dq=dq[1], num_warps_dq=dq[2],
      num_stages_dq=dq[3])
  if wide:
    config = _halve(config)
  # Shrink until it fits the GPU's shared memory (e.g. consumer parts with 99 KiB).
  limit = shared_memory_limit(compute_capability)
  while any(need > limit for need in
            shared_memory_estimate(config, head_dim, dtype, score_bytes).values()):
    config = _shrink(config)
  return config


def _halve(config: TritonConfig) -> TritonConfig:
  changes = {name: max(16, getattr(config, name) // 2) for name in _BLOCK_FIELDS}
  return dataclasses.replace(config, **changes)


def _shrink(config: TritonConfig) -> TritonConfig:
  stages = {name: getattr(config, name) for name in _STAGE_FIELDS}
  if any(s > 1 for s in stages.values()):
    return dataclasses.replace(config, **{k: max(1, s - 1) for k, s in stages.items()})
  if all(getattr(config, name) == 16 for name in _BLOCK_FIELDS):
    raise ValueError(f"no config fits; smallest tried: {config}")
  return _halve(config)


# The name of the first release, kept for users.
AttentionConfig = TritonConfig
