#!/bin/bash
# Session 13 call 1: the fused backward at H = 128 ("cols" dQ share), where it spilled
# 348-400 bytes (session 11). With the asynchronous step the fresh Sᵀ and dPᵀ accumulators
# stay live through the dQ product inside the step; JF_DQ_AFTER=1 (.gpu/e18) exchanges dS
# inside the step but issues the dQ product after the step's scope has ended (its
# accumulators dead). Also the serial fused step (overlap=0). H = 128 per kernel against
# the deterministic pair and cuDNN; H = 64's fused default (":nd") with and without.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
G=128x16384x1,128x16384x0,128x4096x1,128x2048x0
F=mosaic_gpu:bwd_fused=1+det=0
for a in 0 1; do
  L=$F; [ $a = 0 ] && L=mosaic_gpu,$F,$F+overlap=0,cudnn
  JF_DQ_AFTER=$a MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e18 timeout 280 python .gpu/kb.py $L $G > $OUT/h128_after$a.log 2>&1
  echo "== JF_DQ_AFTER=$a: $L"; summ < $OUT/h128_after$a.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/h128_after$a.log | grep -E "spill" | cut -c1-100 | uniq -c
done
for a in 0 1; do
  JF_DQ_AFTER=$a PYTHONPATH=.gpu/e18 timeout 120 python .gpu/kb.py mosaic_gpu:nd,cudnn 64x16384x1,64x2048x0 > $OUT/h64_after$a.log 2>&1
  echo "== H64 JF_DQ_AFTER=$a"; summ < $OUT/h64_after$a.log
done
