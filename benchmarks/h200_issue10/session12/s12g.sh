#!/bin/bash
# Session 12 call 8: the dQ kernel at H = 256 with two consumers sharing one query tile
# (consumer 0: S and P, handed over in fp32; consumer 1: dP, dS and dQ) against one
# consumer. Before (.gpu/before12b = HEAD's jflash: the balanced dK/dV kernel, one dQ
# consumer) and after, per kernel, one process each, two passes; ptxas of the dQ
# kernel; native tests of H > 128; then python -m jflash.bench --quick before/after.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
G=256x16384x1,256x16384x0,256x2048x1,256x2048x0
for pass in 1 2; do
  for side in before now; do
    P=.gpu/before12b; [ $side = now ] && P=.
    MOSAIC_GPU_DUMP_PTXAS=$([ $pass = 1 ] && echo 1) PYTHONPATH=$P timeout 120 python .gpu/kb.py mosaic_gpu,cudnn $G > $OUT/p${pass}_$side.log 2>&1
    echo "== pass $pass $side: pair (default), cudnn"; summ < $OUT/p${pass}_$side.log
    [ $pass = 1 ] && grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dq" $OUT/p1_$side.log | grep -E "spill" | sort | uniq -c | cut -c1-120
  done
done
PYTHONPATH=. timeout 240 python -m pytest -q -p no:benchmark -p no:cacheprovider -n 8 tests/test_mosaic_gpu.py -k "h256 or h250 or h192 or bitwise" > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
for side in before now; do
  P=.gpu/before12b; [ $side = now ] && P=.
  PYTHONPATH=$P timeout 140 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_$side.log 2>&1; echo "$side rc $?"
  grep -E "jflash:mosaic_gpu|cudnn" $OUT/quick_$side.log | grep -v memory | cut -c1-160
done
