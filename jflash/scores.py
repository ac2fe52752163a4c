"""Score modifications applied between ``q k^T`` and the softmax, with their derivative.

With scores ``s = scale * q.k`` (fp32), a call's logits are::

    z = s + bias                   if bias (broadcastable to [B, N, T, S])
    z = cap * tanh(z / cap)        if logits_soft_cap = cap    (Gemma 2)
    z = z - slope * |i + q_offset - j|            if alibi_slopes (Press et al. 2022;
                                                  FlashAttention-2's convention, after
                                                  the soft-cap)

then masked and fed to the softmax. :class:`ScoreMod` is the static description; when
it is off (`ScoreMod()`), the kernels keep their plain inner loop and none of this is
traced. The functions work on Pallas (Triton) values and on plain jnp arrays alike.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ScoreMod:
  """Static score modification of a call.

  Attributes:
    soft_cap: None, or the cap c > 0 of ``c * tanh(z / c)``.
    alibi: per-(batch, head) ALiBi slopes are given (runtime [B, N] float32).
    bias: an additive bias is given (runtime, broadcastable to [B, N, T, S]).
    bias_grad: the bias is differentiated: the backward pass also returns dL/dbias.
    dropout_rate: dropout on the probabilities (after the softmax, so not part of the
      logits): each is kept with probability 1 - rate (:mod:`jflash.dropout`), scaled by
      1 / (1 - rate), from the runtime [B, N] seeds.
  """

  soft_cap: float | None = None
  alibi: bool = False
  bias: bool = False
  bias_grad: bool = False
  dropout_rate: float = 0.0

  @property
  def active(self) -> bool:
    return self.soft_cap is not None or self.alibi or self.bias

  def logits(self, s, *, bias=None, q_pos=None, kv_pos=None, slope=None,
             with_grad: bool = False):
    """z from scaled scores `s` (fp32).

    `bias` is the bias tile (with bias only), `q_pos` are query positions (index +
    q_offset) [rows, 1], `kv_pos` key positions [1, cols] and `slope` the head's ALiBi
    slope (used with alibi only). With `with_grad`, returns (z, dz/d(s + bias)), the
    latter None when it is 1.
    """
    z, dz_ds = s, None
    if self.bias:
      s = z = s + bias.astype(jnp.float32)
    if self.soft_cap is not None:
      t = jnp.tanh(s * (1.0 / self.soft_cap))
      z, dz_ds = self.soft_cap * t, 1.0 - t * t
    if self.alibi:
      z = z - slope * jnp.abs(q_pos - kv_pos).astype(jnp.float32)
    return (z, dz_ds) if with_grad else z
