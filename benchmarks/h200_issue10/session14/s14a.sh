#!/bin/bash
# Session 14's change, to measure in the first GPU call of the next session (session 14
# got no machine): the backward's positions and mask formed after the product before
# them, from 1-D iotas, and lse/delta loaded where used (commit after eea210b). Before
# the call, on the CPU machine:
#   mkdir -p .gpu/base && git archive eea210b jflash | tar -x -C .gpu/base
#   cp benchmarks/h200_issue10/kb.py .gpu/kb.py
# Trees: .gpu/base (before), . (after). Per kernel CUPTI medians (kb.py), ptxas's spill
# lines of the backward kernels; then native tests of the kernels the change touches.
# Prediction (benchmarks/h200_issue10/mlir_pressure.py, BUILD_NOTES session 14): fewer
# spills in every dK/dV kernel (H = 128 pair causal 164 B -> 0), a faster masked step.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
spills() { grep -A3 "Compiling entry function 'jflash_mgpu_bwd" $1 | grep -E "entry|spill stores" | sed -e 's/ptxas info    : Compiling entry function//' -e "s/_mosaic_gpu_kernel' for 'sm_90a'//" | paste - - | awk '{print $1, "stack", $2, "st", $6, "ld", $10}'; }
F=mosaic_gpu:bwd_fused=1+det=0
G=128x16384x1,128x16384x0,128x2048x0
run() { # tag pythonpath labels grid secs
  MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=$2 timeout $5 python .gpu/kb.py $3 $4 > $OUT/$1.log 2>&1
  echo "== $1 ($2): $3"; summ < $OUT/$1.log; spills $OUT/$1.log
}
run base .gpu/base mosaic_gpu,$F,cudnn $G 120
run new . mosaic_gpu,$F,cudnn $G 120
run base64 .gpu/base mosaic_gpu,mosaic_gpu:nd,cudnn 64x16384x1,64x2048x0 70
run new64 . mosaic_gpu,mosaic_gpu:nd,cudnn 64x16384x1,64x2048x0 70
run base256 .gpu/base mosaic_gpu,cudnn 256x16384x1 40
run new256 . mosaic_gpu,cudnn 256x16384x1 40
timeout 120 python -m pytest -q -p no:benchmark -n 12 tests/test_mosaic_gpu_common.py tests/test_mosaic_gpu.py -k "common or against_oracle_native or bitwise or backward_kernels" > $OUT/native.log 2>&1; tail -5 $OUT/native.log
