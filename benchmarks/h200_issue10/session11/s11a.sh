#!/bin/bash
# Session 11 call 1: the "alternate" dQ share with the consumers decoupled (only the reader
# waits for the other's dS; the writer waits only before reusing a slot) against session 10's
# lockstep share (.gpu/before11 = e96d0f5's jflash), ABAB; fused at causal T <= 4k;
# the LM shape; H=128 cols vs alternate (.gpu/e13 = this tree + env hooks JF_FMODE, JF_DQ_OV);
# the deterministic dQ kernel overlapped at 64 x 128 (JF_DQ_OV).
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
G=64x16384x1,64x16384x0,64x4096x1,64x2048x1,64x2048x0
F=mosaic_gpu:bwd_fused=1+bwd_block_q=64
for pass in 1 2; do
  for tree in before11 now; do
    path=.gpu/before11; [ $tree = now ] && path=.
    labels=mosaic_gpu:nd; [ $pass = 1 ] && labels=mosaic_gpu:nd,$F
    MOSAIC_GPU_DUMP_PTXAS=$([ $pass = 1 ] && echo 1) PYTHONPATH=$path timeout 110 python .gpu/kb.py $labels $G > $OUT/p${pass}_$tree.log 2>&1
    echo "== pass $pass $tree: $labels"; summ < $OUT/p${pass}_$tree.log
    [ $pass = 1 ] && grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/p1_$tree.log | grep -E "spill" | sort | uniq -c | cut -c1-120
  done
done
PYTHONPATH=. timeout 60 python .gpu/kb.py cudnn $G > $OUT/cudnn.log 2>&1
echo "== cudnn"; summ < $OUT/cudnn.log
for tree in before11 now; do
  path=.gpu/before11; [ $tree = now ] && path=.
  NH=768 PYTHONPATH=$path timeout 60 python .gpu/kb.py mosaic_gpu:nd,cudnn 64x8192x1,64x2048x1 > $OUT/lm_$tree.log 2>&1
  echo "== LM shape $tree: nd, cudnn"; summ < $OUT/lm_$tree.log
done
for mode in cols alternate; do
  JF_FMODE=$mode MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e13 timeout 60 python .gpu/kb.py mosaic_gpu:bwd_fused=1,mosaic_gpu 128x16384x1 > $OUT/h128_$mode.log 2>&1
  echo "== H128 $mode: fused, det"; summ < $OUT/h128_$mode.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/h128_$mode.log | grep -E "spill" | sort | uniq -c | cut -c1-120
done
for ov in 0 1 0 1; do
  JF_DQ_OV=$ov PYTHONPATH=.gpu/e13 timeout 50 python .gpu/kb.py mosaic_gpu 64x16384x1,64x2048x1 > $OUT/dqov_$ov.log 2>&1
  echo "== det, dQ overlap $ov"; summ < $OUT/dqov_$ov.log
done
