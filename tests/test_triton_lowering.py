"""Lower the Triton kernels for an H100 on any machine, and verify the Triton IR.

Interpret mode runs the kernels' JAX semantics but never the Pallas -> Triton lowering,
which has its own failure modes (e.g. it once typed weak int literals of a select as
i1, which the GPU rejected with "'arith.minsi' op requires the same type"). Lowering
here, with the GPU description supplied by hand, and running the MLIR verifier catches
those on CPU-only CI. Uses JAX internals (pinned to jax 0.11.x in pyproject.toml).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jflash.kernels.triton.backward import backward
from jflash.kernels.triton.forward import forward
from jflash.backends import Operands
from jflash import masks
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod
from jflash.kernels.triton.config import default_config


ALL_VARIANTS = dict(window=(33, 5), dynamic_offset=True, q_lengths=True, kv_lengths=True,
                    segment_ids=True, dense_mask=True)


@pytest.mark.parametrize("b, t, s, n, kv_heads, h, is_causal, dtype, variants", [
    (2, 1024, 1024, 4, 4, 64, False, jnp.bfloat16, None),
    (2, 1024, 1024, 4, 2, 128, True, jnp.bfloat16, None),
    (1, 4096, 4096, 2, 2, 64, True, jnp.bfloat16, None),  # long rows: the other forward tiles
    (1, 4096, 4096, 2, 1, 128, False, jnp.float16, None),
    (1, 200, 257, 6, 3, 80, True, jnp.float16, None),
    (1, 257, 200, 4, 1, 256, True, jnp.float32, None),
    (1, 17, 1, 2, 1, 1, False, jnp.float32, None),
    # Every variant: tile lists (lax.cond per tile), scalar loads, soft-cap, ALiBi, bias
    # (and dbias), dense mask, dropout.
    (2, 1000, 1000, 4, 2, 128, True, jnp.bfloat16, ALL_VARIANTS),
    (1, 200, 257, 6, 3, 80, False, jnp.float32, ALL_VARIANTS),
    (2, 300, 300, 2, 2, 64, True, jnp.float16, dict(window=(None, 7), dynamic_offset=True)),
    (2, 256, 384, 4, 2, 64, False, jnp.bfloat16, dict(dense_mask=True)),  # mask, bias by head
    # A mask object: constant tile lists and pattern tables.
    (1, 1000, 1000, 4, 2, 128, True, jnp.bfloat16,
     dict(mask_object=(masks.Strided(64) | masks.LocalWindow(100, 0)) & masks.Causal())),
])
def test_kernels_lower_to_valid_triton_ir(triton_modules, b, t, s, n, kv_heads, h, is_causal,
                                          dtype, variants):
  spec = MaskSpec(t, s, is_causal, **(variants or {}))
  score_mod = (ScoreMod(soft_cap=30.0, alibi=True, bias=True, bias_grad=True,
                        dropout_rate=0.1)
               if variants and not spec.mask_object else ScoreMod())
  # A bias per head and batch 1 (with many variants) or per batch, one mask per head.
  bias_shape = (1, n, t, s) if variants == ALL_VARIANTS else (b, 1, t, s)
  config = default_config(h, jnp.dtype(dtype), is_causal, (9, 0), kv_len=s)
  q = jax.ShapeDtypeStruct((b, t, n, h), dtype)
  kv = jax.ShapeDtypeStruct((b, s, kv_heads, h), dtype)
  stats = jax.ShapeDtypeStruct((b, t, n), jnp.float32)
  per_batch = jax.ShapeDtypeStruct((b,), jnp.int32)
  operands = Operands(
      q_offset=per_batch if spec.dynamic_offset else None,
      q_lengths=per_batch if spec.q_lengths else None,
      kv_lengths=per_batch if spec.kv_lengths else None,
      q_segment_ids=jax.ShapeDtypeStruct((b, t), jnp.int32) if spec.segment_ids else None,
      kv_segment_ids=jax.ShapeDtypeStruct((b, s), jnp.int32) if spec.segment_ids else None,
      alibi_slopes=jax.ShapeDtypeStruct((b, n), jnp.float32) if score_mod.alibi else None,
      bias=jax.ShapeDtypeStruct(bias_shape, jnp.float32) if score_mod.bias else None,
      mask=jax.ShapeDtypeStruct((b, n, t, s), jnp.int8) if spec.dense_mask else None,
      dropout_seeds=(jax.ShapeDtypeStruct((b, n), jnp.uint32) if score_mod.dropout_rate
                     else None))
  kwargs = dict(scale=h ** -0.5, spec=spec, score_mod=score_mod, config=config)
  jax.jit(lambda q, k, v, ops: forward(q, k, v, ops, **kwargs)).trace(q, kv, kv, operands).lower(
      lowering_platforms=("cuda",))
  jax.jit(lambda q, k, v, ops, lse, delta, do: backward(q, k, v, ops, lse, delta, do, **kwargs)
          ).trace(q, kv, kv, operands, stats, stats, q).lower(lowering_platforms=("cuda",))
  assert len(triton_modules) == 3  # forward, dK/dV, dQ
  for module in triton_modules:
    assert module.operation.verify()
