#!/bin/bash
# Session 11 call 9: persistence elsewhere at H=64 — the deterministic pair and the fused
# kernel, non-causal T=2k/4k and causal T=8k; two passes.
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
F=mosaic_gpu:bwd_fused=1+bwd_block_q=128
F64=mosaic_gpu:bwd_fused=1+bwd_block_q=64
for pass in 1 2; do
  PYTHONPATH=. timeout 90 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_persistent=1,$F,$F+bwd_persistent=1,cudnn 64x2048x0,64x4096x0 > $OUT/nc_$pass.log 2>&1
  echo "== pass $pass non-causal: det, det persistent, fused, fused persistent, cudnn"; summ < $OUT/nc_$pass.log
  PYTHONPATH=. timeout 70 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_persistent=1,$F64,$F64+bwd_persistent=1,cudnn 64x8192x1 > $OUT/c8k_$pass.log 2>&1
  echo "== pass $pass causal 8k: det, det persistent, fused 64, fused 64 persistent, cudnn"; summ < $OUT/c8k_$pass.log
done
