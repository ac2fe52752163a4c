#!/bin/bash
# Session 11 call 2: variant B of the decoupled "alternate" share (dS written before the
# branch, as in session 10; only the waits differ) against session 10's lockstep share
# (.gpu/before11), ABAB with ptxas; the dQ kernel overlapped at 64 x 128 with ptxas (e13).
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
G=64x16384x1,64x16384x0,64x2048x0
for pass in 1 2; do
  for tree in before11 now; do
    path=.gpu/before11; [ $tree = now ] && path=.
    MOSAIC_GPU_DUMP_PTXAS=$([ $pass = 1 ] && echo 1) PYTHONPATH=$path timeout 80 python .gpu/kb.py mosaic_gpu:nd $G > $OUT/p${pass}_$tree.log 2>&1
    echo "== pass $pass $tree: nd"; summ < $OUT/p${pass}_$tree.log
    [ $pass = 1 ] && grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/p1_$tree.log | grep -E "spill" | sort | uniq -c | cut -c1-120
  done
done
for tree in before11 now; do
  path=.gpu/before11; [ $tree = now ] && path=.
  NH=768 PYTHONPATH=$path timeout 60 python .gpu/kb.py mosaic_gpu:nd,cudnn 64x8192x1 > $OUT/lm_$tree.log 2>&1
  echo "== LM shape $tree: nd, cudnn"; summ < $OUT/lm_$tree.log
done
for ov in 1 0; do
  JF_DQ_OV=$ov MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e13 timeout 50 python .gpu/kb.py mosaic_gpu 64x16384x1,64x4096x1 > $OUT/dqov_$ov.log 2>&1
  echo "== det, dQ overlap $ov"; summ < $OUT/dqov_$ov.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dq" $OUT/dqov_$ov.log | grep -E "spill" | sort | uniq -c | cut -c1-120
done
