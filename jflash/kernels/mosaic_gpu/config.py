"""Tile configuration of the Mosaic GPU (Hopper) kernels."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# Hopper's shared memory per block (227 KiB usable of 228).
SMEM_BYTES = 227 * 1024
#: Head dims the kernels run natively; others are zero-padded up to the next one.
HEAD_DIMS = (64, 96, 128, 192, 256)


@dataclasses.dataclass(frozen=True)
class MosaicGpuConfig:
  """Tiles of the Mosaic GPU kernels (FlashAttention-3 layout, Shah et al. 2024).

  The forward works on 2 * `block_q` query rows at a time: two consumer warpgroups of
  `block_q` rows each and a producer warpgroup streaming key/value tiles of `block_kv`
  rows through a ring of `num_stages` shared-memory slots (TMA). With `persistent`, one
  CTA per SM runs such work items one after the other: the ring runs on across items
  and the next item's queries load during the current one (where shared memory allows).
  `bwd_persistent` does the same for the two backward kernels.

  Attributes:
    block_q: query rows per consumer warpgroup in the forward (a multiple of 64).
    block_kv: key rows per tile in the forward (a multiple of 64).
    num_stages: key/value ring depth of the forward (>= 2).
    bwd_block_q: query rows per tile in the backward (a multiple of 64).
    bwd_block_kv: key rows per tile in the backward (a multiple of 64).
    bwd_num_stages: ring depth of the backward kernels (>= 2).
    bwd_dq_block_q, bwd_dq_block_kv: the dQ kernel's own query and key rows per tile
      (multiples of 64), None for `bwd_block_q` and `bwd_block_kv`.
    persistent: the forward runs one CTA per SM over all its work items (else one CTA
      per item).
    bwd_persistent: the same for the dQ and dK/dV kernels.
    overlap: the forward overlaps each consumer's softmax with its own next matrix
      multiplies (FlashAttention-3's intra-warpgroup pipelining) over the run of
      unmasked key tiles of each work item; the masked tiles at either end of it take
      the plain step. Native form only (the interpretable form ignores it).
    bwd_fused: one fused backward kernel instead of the dQ and dK/dV kernels: dQ is
      summed by unordered fp32 TMA reduce-adds (FlashAttention-3), so it needs
      ``jflash.attention(..., deterministic=False)``; head dims <= 128 only. The default
      with deterministic=False at H <= 64 where it measured 4-13% faster than the two
      kernels: causal T > 4k, non-causal T >= 2k; at causal T <= 4k 9-10% slower, at
      H = 128 up to 40% (H200; BUILD_NOTES, issue 10).
    bwd_overlap: the backward kernels' asynchronous step (each consumer issues its S
      and dP products together and computes P while dP runs, FlashAttention-3's
      intra-warpgroup overlap; native form only). None: where it measured faster
      (64 x 64 tiles at H <= 128; in the fused kernel at H = 64 only). True or False
      forces it on or off in the dQ, dK/dV and fused kernels; True needs head dims
      <= 128 (past them the dK/dV kernel's consumers share a tile, with no such step).
  """

  block_q: int = 64
  block_kv: int = 128
  num_stages: int = 2
  bwd_block_q: int = 64
  bwd_block_kv: int = 64
  bwd_num_stages: int = 2
  bwd_dq_block_q: int | None = None
  bwd_dq_block_kv: int | None = None
  persistent: bool = True
  bwd_persistent: bool = False
  overlap: bool = False
  bwd_fused: bool = False
  bwd_overlap: bool | None = None

  def __post_init__(self):
    for name in ("block_q", "block_kv", "bwd_block_q", "bwd_block_kv", "bwd_dq_block_q",
                 "bwd_dq_block_kv"):
      value = getattr(self, name)
      if value is None and name.startswith("bwd_dq"):
        continue
      if not isinstance(value, int) or value <= 0 or value % 64:
        raise ValueError(f"MosaicGpuConfig.{name}={value!r} must be a positive multiple of 64")
    for name in ("num_stages", "bwd_num_stages"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 2:
        raise ValueError(f"MosaicGpuConfig.{name}={value!r} must be an int >= 2")
    for name in ("persistent", "bwd_persistent", "overlap", "bwd_fused"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"MosaicGpuConfig.{name}={getattr(self, name)!r} must be a bool")
    if self.bwd_overlap is not None and not isinstance(self.bwd_overlap, bool):
      raise ValueError(f"MosaicGpuConfig.bwd_overlap={self.bwd_overlap!r} must be None or a "
                       "bool")


def kernel_head_dim(head_dim: int) -> int:
  """The head dim the kernels run at: the smallest of HEAD_DIMS >= `head_dim`."""
  for h in HEAD_DIMS:
    if h >= head_dim:
      return h
  raise ValueError(f"head dim {head_dim} > {HEAD_DIMS[-1]}")


def swizzle_bytes(minor: int, dtype) -> int:
  """The widest shared-memory swizzle (128, 64 or 32 bytes) dividing a row of `minor`."""
  row = minor * jnp.dtype(dtype).itemsize
  for swizzle in (128, 64, 32):
    if row % swizzle == 0:
      return swizzle
  raise ValueError(f"a row of {minor} x {jnp.dtype(dtype).name} is not a multiple of 32 bytes")


def forward_smem_bytes(config: MosaicGpuConfig, head_dim: int, itemsize: int,
                       interpret_form: bool, q_bufs: int = 1) -> int:
  """Shared memory the forward kernel asks for, in bytes (`q_bufs` query tile buffers)."""
  q = q_bufs * 2 * config.block_q * head_dim * itemsize
  kv = 2 * config.num_stages * config.block_kv * head_dim * itemsize
  lse = 2 * config.block_q * 4
  p = 2 * config.block_q * config.block_kv * itemsize if interpret_form else 0
  return q + kv + lse + p + 4096  # barriers and alignment (measured: ~2 KiB)


def forward_q_buffers(config: MosaicGpuConfig, head_dim: int, itemsize: int) -> int:
  """Query tile buffers of the native forward: 2 (prefetch the next item's) if they fit."""
  if config.persistent and forward_smem_bytes(config, head_dim, itemsize, False, 2) <= SMEM_BYTES:
    return 2
  return 1


def dq_smem_bytes(consumers: int, block_q: int, block_kv: int, stages: int, head_dim: int,
                  itemsize: int, split: bool = False) -> int:
  """Shared memory of the native dQ kernel: Q, dO, lse, delta per consumer (one set
  with `split`, plus the two slots of the fp32 P tile the consumers hand over), the K/V
  ring."""
  own = consumers * (2 * block_q * head_dim * itemsize + 2 * block_q * 4)
  if split:
    own = 2 * block_q * head_dim * itemsize + 2 * block_q * 4 + 2 * block_q * block_kv * 4
  return own + 2 * stages * block_kv * head_dim * itemsize + 1024


def fused_dq_share(head_dim: int) -> str:
  """How the fused backward's two consumers share dQ at kernel head dim `head_dim` (one
  of :data:`.backward_steps.DQ_SHARES`): at H = 128 each adds half the columns (on an
  H200 at T=16k causal 0.92x the time of "alternate", which spills more there); below,
  where half a row is not a whole 128-byte swizzle row, they take turns."""
  return "cols" if head_dim == 128 else "alternate"


def fused_smem_bytes(block_q: int, block_kv: int, stages: int, head_dim: int,
                     itemsize: int, dq_share: str) -> int:
  """Shared memory of the native fused backward: K and V of two consumers, the Q/dO/lse/
  delta ring, each consumer's dS tile in two slots (by entry parity) and its fp32 dQ
  share (of half the columns with `dq_share` "cols")."""
  own = 2 * 2 * block_kv * head_dim * itemsize
  ring = stages * (2 * block_q * head_dim * itemsize + 2 * block_q * 4)
  ds = 2 * 2 * block_kv * block_q * itemsize
  dq = 2 * block_q * (head_dim // 2 if dq_share == "cols" else head_dim) * 4
  return own + ring + ds + dq + 1024


def default_config(head_dim: int, is_causal: bool, q_len: int | None = None,
                   deterministic: bool = True) -> MosaicGpuConfig:
  """The forward and backward tiles for head dim `head_dim` (after padding), T = `q_len`;
  with `deterministic` False, the fused backward where it measured faster."""
  # Measured on an H200 (BUILD_NOTES, issue 10 log): at H=64, backward query tiles of
  # 128 rows ran 22% faster than 64 (376 vs 307 TFLOP/s at T=2k) before the backward
  # overlapped S and dP (session 4; see below); at H=128 they spill
  # and ran at 205 vs 364. Forward key tiles of 128 beat 64 (408 vs 328 at H=64) and a
  # third stage did not help (375).
  # A persistent forward ran 1.00-1.22x the one-CTA-per-item launch (H200, H=64/128/256,
  # T=512-16k); a persistent backward only helped at short T (H=128: T=512 1.07x, 1k
  # 1.03x, 2k 1.01x) and lost 2-6% at H=256 and at T=16k causal.
  # At H=64, key tiles of 256 ran the non-causal forward 3% faster (459 vs 444 at T=2k)
  # and the causal one 19% slower (383 vs 474 at T=16k).
  bwd_persistent = q_len is not None and q_len <= 1024 and head_dim <= 128
  # The intra-warpgroup overlap (H200, issue 10 session 6): non-causal 1.00-1.09x the plain
  # loop at H = 128 and 256 (T = 2k, 16k); causal 0.98-0.99x at T = 2k, 1.00x at 4k,
  # 1.01-1.02x at 8k and 16k (H = 128, 256). At H = 64 it lost 2-45% (key tiles of 256).
  overlap = not is_causal or (q_len is not None and q_len > 4096)
  if head_dim <= 64:
    # The dQ kernel's tiles: 64 queries by 128 keys (one at a time, no overlap) took
    # 0.94-0.98x the time of the dK/dV kernel's tiles (H200, issue 10 session 10: T=2k
    # and 16k, causal and not; with overlap 0.94-1.0x).
    forward = dict(block_q=64, block_kv=128 if is_causal else 256, num_stages=2,
                   bwd_dq_block_q=64, bwd_dq_block_kv=128)
    # Causal, T <= 4k: 64-query tiles, whose S and dP overlap in the backward
    # (backward.py), with 3 stages ran 1.10x (T=1k), 1.06x (2k) and 1.02x (4k) the
    # 128-query tiles, and 0.99x at 16k (H200, session 4 of issue 10); persistent, both
    # backward kernels took 0.95x (T=1k), 0.97x (2k) and 0.98x (4k) the time of one CTA
    # per item (session 11, two passes).
    if is_causal and q_len is not None and q_len <= 4096:
      return MosaicGpuConfig(**forward, bwd_block_q=64, bwd_num_stages=3,
                             bwd_persistent=True)
    # deterministic=False: the fused backward (dQ by fp32 reduce-adds, the consumers
    # taking turns on it: backward_steps.dq_share) where its kernel took less time than
    # the two kernels (H200, issue 10 session 10): causal T > 4k (T=16k 0.92x, the
    # gpt2-small shape at T=8k 0.96x) and non-causal T >= 2k with 128-query tiles (T=2k
    # 0.91x, 4k 0.87x, 16k 0.87x); causal T <= 4k ran 1.09-1.10x (kept off; 1.17-1.23x
    # with 2 stages, session 11), T < 2k is unmeasured. Causal query tiles (session 11,
    # against 64): 128 at T=16k 0.94x (6139, 6163 vs 6607, 6545 µs; cuDNN 6322, 6339),
    # 16k with 12 heads 0.95x, 32k 0.96x; at T=8k 0.99x with 32 heads but 1.03x with
    # the gpt2-small shape's 12 (B=2), so 64 up to 8k.
    if not deterministic and q_len is not None and (q_len > 4096 if is_causal
                                                    else q_len >= 2048):
      causal_64 = is_causal and q_len <= 8192
      return MosaicGpuConfig(**forward, bwd_block_q=64 if causal_64 else 128, bwd_fused=True)
    return MosaicGpuConfig(**forward, bwd_block_q=128, bwd_persistent=bwd_persistent)
  # Causal, T > 8k, H = 128 and 256: one CTA per work item, which the hardware hands out
  # as SMs free up (in L2 sections of one pair, common.l2_group), ran the forward 1.03x
  # (H=128) and 1.05x (H=256) the persistent launch at T = 16k; at T = 8k 1.03x and
  # 0.96x, at H=64 0.91x (H200, issue 10 session 9).
  persistent = not (is_causal and q_len is not None and q_len > 8192
                    and head_dim in (128, 256))
  if head_dim <= 128:
    return MosaicGpuConfig(block_q=64, block_kv=128, num_stages=2, overlap=overlap,
                           persistent=persistent, bwd_persistent=bwd_persistent)
  return MosaicGpuConfig(block_q=64, block_kv=64, num_stages=2, overlap=overlap,
                         persistent=persistent)


def check_fits(config: MosaicGpuConfig, head_dim: int, dtype,
               deterministic: bool = False) -> None:
  """Raises ValueError if `config`'s forward tiles (or, with `bwd_fused`, the fused
  backward's) do not fit in shared memory, or `bwd_fused` is asked for at H > 128 or
  with `deterministic`, or `bwd_overlap=True` at H > 128."""
  h, itemsize = kernel_head_dim(head_dim), jnp.dtype(dtype).itemsize
  if config.bwd_overlap and h > 128:
    raise ValueError(f"MosaicGpuConfig(bwd_overlap=True) serves head dims <= 128, not "
                     f"{head_dim}: past them the dK/dV kernel's consumers share a tile")
  need = forward_smem_bytes(config, h, itemsize, interpret_form=False)
  if need > SMEM_BYTES:
    raise ValueError(
        f"{config} needs {need} bytes of shared memory at head dim {head_dim} and "
        f"{jnp.dtype(dtype).name}; Hopper has {SMEM_BYTES}")
  if not config.bwd_fused:
    return
  if deterministic:
    raise ValueError("MosaicGpuConfig(bwd_fused=True) needs deterministic=False: its dQ "
                     "is an unordered sum of fp32 reduce-adds")
  if h > 128:
    raise ValueError(f"MosaicGpuConfig(bwd_fused=True) serves head dims <= 128, not "
                     f"{head_dim}")
  need = fused_smem_bytes(config.bwd_block_q, config.bwd_block_kv, config.bwd_num_stages, h,
                          itemsize, fused_dq_share(h))
  if need > SMEM_BYTES:
    raise ValueError(
        f"{config} needs {need} bytes of shared memory for the fused backward at head dim "
        f"{head_dim} and {jnp.dtype(dtype).name}; Hopper has {SMEM_BYTES}")
