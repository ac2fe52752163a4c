"""The benchmark's cases: one attention problem, the papers' grid, its FLOPs and inputs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem: B·T tokens of N heads of size H (K key/value heads)."""

  head_dim: int
  seq_len: int
  is_causal: bool
  dtype: str = "bfloat16"
  batch: int = 1
  heads: int = 16
  kv_heads: int = 16

  @classmethod
  def grid(cls, head_dim, seq_len, is_causal, dtype="bfloat16", tokens=16384, width=2048,
           group=1):
    """The papers' grid point: B = tokens // T, N = width // H, K = N // group."""
    heads = max(1, width // head_dim)
    return cls(head_dim, seq_len, is_causal, dtype, max(1, tokens // seq_len), heads,
               max(1, heads // group))

  def forward_flops(self) -> float:
    """4·B·N·T·S·H, halved when causal (the FlashAttention convention)."""
    flops = 4.0 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim
    return flops / 2 if self.is_causal else flops

  def label(self) -> str:
    gqa = f" K={self.kv_heads}" if self.kv_heads != self.heads else ""
    return (f"H={self.head_dim} T={self.seq_len} {'causal' if self.is_causal else 'full'} "
            f"B={self.batch} N={self.heads}{gqa} {self.dtype}")

  def shapes(self) -> list[jax.ShapeDtypeStruct]:
    """The shapes and dtype of q, k, v and dO."""
    q_shape = (self.batch, self.seq_len, self.heads, self.head_dim)
    kv_shape = (self.batch, self.seq_len, self.kv_heads, self.head_dim)
    return [jax.ShapeDtypeStruct(s, jnp.dtype(self.dtype))
            for s in (q_shape, kv_shape, kv_shape, q_shape)]

  def inputs(self) -> list[jax.Array]:
    """Random q, k, v, dO of the case's shapes and dtype, on the default device."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    return [jax.random.normal(key, s.shape, s.dtype) for key, s in zip(keys, self.shapes())]
