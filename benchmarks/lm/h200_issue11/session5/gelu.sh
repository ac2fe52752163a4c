#!/bin/bash
# Issue 11 session 5: the GELU's saved tanh. .gpu/e14 = examples/ with env JF_GELU: "" (as
# now: XLA saves tanh for the backward), "vjp" (custom_vjp: only the pre-activation saved,
# tanh recomputed in the backward), "remat" (nnx.remat of the MLP saving the pre-activation
# and the GELU output by name), "ckpt" (jax.checkpoint around the GELU: session 2's try).
# cuDNN attention, T=2048, B=8, --bench 50, two rounds; then a traced step of "" and "vjp".
export PYTHONPATH=. PYTHONUNBUFFERED=1
for r in 1 2; do
  for m in "" vjp remat ckpt; do
    JF_GELU=$m timeout 70 python .gpu/e14/examples/lm_speed.py --steps 50 --cases cudnn:2048:8 2>/dev/null | python3 -c "
import sys, json
for l in sys.stdin: r = json.loads(l); print('gelu=$m', r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2), r.get('peak_memory_bytes'))" | tee -a $OUT/gelu.txt
  done
done
