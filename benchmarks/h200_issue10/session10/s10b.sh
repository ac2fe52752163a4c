#!/bin/bash
# Session 10 call 2: the fused backward's dQ shared "alternate" (one consumer per entry adds
# dS K over both consumers' keys; .gpu/e11 = the tree with env JF_FMODE) vs "keys" (the default at H=64)
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
G=64x16384x1,64x16384x0,64x4096x1,64x2048x1,64x2048x0
F=mosaic_gpu:bwd_fused=1+bwd_block_q=64
for mode in keys alternate; do
  JF_FMODE=$mode MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e11 timeout 150 python .gpu/kb.py mosaic_gpu:nd,$F $G > $OUT/m_$mode.log 2>&1
  echo "== $mode: default nd, fused 64x64"; summ < $OUT/m_$mode.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/m_$mode.log | grep -E "spill" | sort | uniq -c | cut -c1-120
done
PYTHONPATH=. timeout 90 python .gpu/kb.py mosaic_gpu,cudnn $G > $OUT/ref.log 2>&1
echo "== tree det, cudnn"; summ < $OUT/ref.log
for mode in keys alternate; do
  NH=768 JF_FMODE=$mode PYTHONPATH=.gpu/e11 timeout 60 python .gpu/kb.py mosaic_gpu:nd,$F,cudnn 64x8192x1,64x2048x1 > $OUT/lm_$mode.log 2>&1
  echo "== LM shape $mode: nd, fused 64x64, cudnn"; summ < $OUT/lm_$mode.log
done
for mode in cols alternate; do
  JF_FMODE=$mode MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e11 timeout 60 python .gpu/kb.py mosaic_gpu:bwd_fused=1 128x16384x1 > $OUT/h128_$mode.log 2>&1
  echo "== H128 $mode"; summ < $OUT/h128_$mode.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/h128_$mode.log | grep -E "spill" | sort | uniq -c | cut -c1-120
done
