"""The ``"xla"`` backend: the FlashAttention-2 tiling in pure JAX; runs on any device."""

from __future__ import annotations

from jflash import backends
from jflash.kernels.xla.config import XlaConfig


class XlaBackend(backends.Backend):
  """Blockwise attention in pure JAX (`lax.map` over tiles, `fori_loop` over what they see)."""

  name = "xla"
  config_type = XlaConfig

  def unavailable_reason(self, device):
    return None  # XLA compiles for every JAX device

  def default_config(self, problem, device):
    return XlaConfig()

  def forward(self, q, k, v, operands, *, scale, spec, score_mod, config, interpret):
    del interpret  # no Pallas here
    from jflash.kernels.xla import blockwise  # pylint: disable=g-import-not-at-top
    return blockwise.forward(q, k, v, operands, scale=scale, spec=spec, score_mod=score_mod,
                             config=config)

  def backward(self, q, k, v, operands, lse, delta, do, *, scale, spec, score_mod, config,
               interpret, deterministic):
    del interpret, deterministic  # deterministic either way: no atomics
    from jflash.kernels.xla import blockwise  # pylint: disable=g-import-not-at-top
    return blockwise.backward(q, k, v, operands, lse, delta, do, scale=scale, spec=spec,
                              score_mod=score_mod, config=config)


BACKEND = XlaBackend()

__all__ = ["BACKEND", "XlaConfig"]
