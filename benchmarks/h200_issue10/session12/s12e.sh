#!/bin/bash
# Session 12 call 6: where the ordered fused backward's time goes (H=64, 16k causal).
# .gpu/e17 = ordered_fused.patch + env switches: JF_RANK0=1 (every add waits for a count
# >= 0: the semaphore load, fence and count still run, no key block waits for another),
# JF_NOSEC=1 (no L2 sections in the unordered fused kernel either).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.gpu/e17
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for pass in 1 2; do
  timeout 80 python .gpu/kb.py mosaic_gpu:bwd_fused=1+det=1,mosaic_gpu:nd 64x16384x1 > $OUT/ord_p$pass.log 2>&1
  echo "== pass $pass ordered, nd (sections)"; summ < $OUT/ord_p$pass.log
  JF_RANK0=1 timeout 80 python .gpu/kb.py mosaic_gpu:bwd_fused=1+det=1 64x16384x1 > $OUT/rank0_p$pass.log 2>&1
  echo "== pass $pass ordered with rank 0 (no waiting on other blocks)"; summ < $OUT/rank0_p$pass.log
  JF_NOSEC=1 timeout 80 python .gpu/kb.py mosaic_gpu:nd 64x16384x1 > $OUT/nosec_p$pass.log 2>&1
  echo "== pass $pass nd without sections"; summ < $OUT/nosec_p$pass.log
done
