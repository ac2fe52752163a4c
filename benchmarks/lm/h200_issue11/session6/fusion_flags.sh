#!/bin/bash
# Issue 11 session 6 call 2: XLA's Triton block-level fusion rewriter and heroless
# priority fusion (LayerNorm and GELU fusions are ~5 ms of the step) on the gpt2-small
# step, cuDNN attention, T=2048 B=8, lm_speed --steps 50, one process per flag set, two
# rounds.
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
BLR=--xla_gpu_experimental_enable_fusion_block_level_rewriter=true
HL=--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true
for r in 1 2; do
  for flags in "" "$BLR" "$HL" "$BLR $HL"; do
    XLA_FLAGS="$flags" timeout 150 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 2>$OUT/err.txt | python3 -c "
import sys, json
for l in sys.stdin:
  r = json.loads(l)
  if 'error' in r: print('flags=[$flags]', l[:300]); continue
  print('flags=[$flags]', r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2), r.get('peak_memory_bytes'), round(r['loss'], 4))" | tee -a $OUT/fusion_flags.txt
    tail -2 $OUT/err.txt | cut -c1-200
  done
done
