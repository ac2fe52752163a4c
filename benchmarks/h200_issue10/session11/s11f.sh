#!/bin/bash
# Session 11 call 7: the deterministic pair (which deterministic=False also runs at causal
# T <= 4k, H=64) with a persistent launch, and with 2 stages instead of 3; two passes.
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
L=mosaic_gpu,mosaic_gpu:bwd_persistent=1,mosaic_gpu:bwd_num_stages=2,cudnn
for pass in 1 2; do
  PYTHONPATH=. timeout 120 python .gpu/kb.py $L 64x4096x1,64x2048x1,64x1024x1 > $OUT/pers_$pass.log 2>&1
  echo "== pass $pass: det default, persistent, 2 stages, cudnn"; summ < $OUT/pers_$pass.log
done
