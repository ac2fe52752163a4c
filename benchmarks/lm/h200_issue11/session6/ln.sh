#!/bin/bash
# Issue 11 session 6: XLA's cuDNN LayerNorm rewrite (--xla_gpu_enable_cudnn_layer_norm) on
# the gpt2-small step. First: does the rewrite fire on flax's LayerNorm (forward and
# backward)? Then lm_speed --steps 50 at T=2048 B=8, cuDNN and jflash attention, one
# process per flag set, two rounds.
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__)"
LN=--xla_gpu_enable_cudnn_layer_norm=true
LT=--xla_gpu_enable_cublaslt=true
for flags in "" "$LN"; do
  XLA_FLAGS="$flags" python - <<'P' 2>&1 | tail -3
import os, jax, jax.numpy as jnp
from flax import nnx
ln = nnx.LayerNorm(768, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
def f(x):
  return jnp.sum(ln(x).astype(jnp.float32) ** 2)
x = jnp.ones((16384, 768), jnp.bfloat16)
txt = jax.jit(jax.value_and_grad(f)).lower(x).compile().as_text()
print(repr(os.environ.get("XLA_FLAGS")), "cudnn norm calls:", txt.count("cudnn$norm"),
      "fusions:", txt.count(" fusion("))
P
done
for r in 1 2; do
  for flags in "" "$LN" "$LN $LT"; do
    XLA_FLAGS="$flags" timeout 150 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 2>/dev/null | python3 -c "
import sys, json
for l in sys.stdin:
  r = json.loads(l)
  if 'error' in r: print('flags=[$flags]', l[:300]); continue
  print('flags=[$flags]', r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2), r.get('peak_memory_bytes'))" | tee -a $OUT/ln.txt
  done
done
