#!/bin/bash
# Session 14, for a later GPU call (after s14a.sh): with the backward's cheaper positions
# (877b95c), does the asynchronous step (S and dP issued together, backward_steps.pipelined)
# now fit at H = 64's default 128-query dK/dV tiles and 64 x 128 dQ tiles? Session 4 saw it
# spill 300-1100 bytes there and run 0.7x. The CPU proxy (mlir_pressure.py) now puts the
# dK/dV kernel's peak at 203 + 19 live-ins (the serial step before the change: 266 + 19).
# Before the call, on the CPU machine:
#   mkdir -p .gpu/e21 && cp -r jflash .gpu/e21/ && patch -p0 -d .gpu/e21 < benchmarks/h200_issue10/session14/e21_overlap_all_tiles.patch
#   cp benchmarks/h200_issue10/kb.py .gpu/kb.py
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
spills() { grep -A3 "Compiling entry function 'jflash_mgpu_bwd" $1 | grep -E "entry|spill stores" | sed -e 's/ptxas info    : Compiling entry function//' -e "s/_mosaic_gpu_kernel' for 'sm_90a'//" | paste - - | awk '{print $1, "stack", $2, "st", $6, "ld", $10}'; }
G=64x16384x1,64x2048x0,64x4096x1
for tree in . .gpu/e21 . .gpu/e21; do
  MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=$tree timeout 110 python .gpu/kb.py mosaic_gpu,cudnn $G > $OUT/h64_$(basename $tree).log 2>&1
  echo "== $tree"; summ < $OUT/h64_$(basename $tree).log; spills $OUT/h64_$(basename $tree).log
done
