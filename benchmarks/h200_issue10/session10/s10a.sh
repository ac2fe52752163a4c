#!/bin/bash
# Session 10 call 1: where the fused backward's time goes at H=64 (.gpu/e10: env hooks in dq_share):
# JF_DQ=store (plain TMA store, wrong sums), skipadd (no copy), skip (no dQ share at all);
# JF_DQBUF=2 (double-buffered fp32 staging); JF_FSEC=4 (L2 sections counting the fp32 dQ accumulator)
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
which ncu nsys; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
G=64x16384x1,64x16384x0
PYTHONPATH=.gpu/e10 timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn $G > $OUT/base.log 2>&1
echo "== tree: det, nd (fused), cuDNN"; summ < $OUT/base.log
for e in JF_DQ=store JF_DQ=skipadd JF_DQ=skip JF_DQBUF=2 JF_FSEC=4; do
  env $e PYTHONPATH=.gpu/e10 timeout 90 python .gpu/kb.py mosaic_gpu:nd $G > $OUT/$e.log 2>&1
  echo "== $e"; summ < $OUT/$e.log
done
for e in JF_DQ=none JF_DQ=store JF_DQ=skip JF_DQBUF=2 JF_FSEC=4; do
  NH=768 env $e PYTHONPATH=.gpu/e10 timeout 60 python .gpu/kb.py mosaic_gpu:nd,cudnn 64x8192x1 > $OUT/lm_$e.log 2>&1
  echo "== LM T=8k $e"; summ < $OUT/lm_$e.log
done
