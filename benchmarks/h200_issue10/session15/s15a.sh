#!/bin/bash
# Issue 10 session 15, first GPU call of the next session that gets one: the backward at
# H = 128 before and after sessions 14-15 (no GPU was lent to either). Prepare on the CPU
# machine (.gpu is untracked and travels with the tree; do not commit it):
#   mkdir -p .gpu/base .gpu/s14 && git archive eea210b jflash | tar -x -C .gpu/base
#   git archive a4423e9 jflash | tar -x -C .gpu/s14 && cp benchmarks/h200_issue10/kb.py .gpu/kb.py
# Trees: .gpu/base = session 13's kernels (measured then), .gpu/s14 = session 14's
# positions/mask change, . = HEAD (also common.opaque and bwd_overlap). ptxas on the CPU
# machine (benchmarks/ptxas_cpu) predicts, H = 128, T = 16k: pair dK/dV causal 164 -> 0 ->
# 0 B spilled; fused causal 348 -> 172 -> 0, non-causal 196 -> 124 -> 0; fused with the
# asynchronous step (bwd_overlap=1) 0. Questions: does the pair's causal backward speed up
# without its spills (session 13: 5618 us vs cuDNN 5209)? Does the spill-free fused kernel,
# serial or asynchronous, beat the pair and cuDNN with deterministic=False (session 13:
# fused 5904, 13698 non-causal)? Does opaque cost anything where nothing spilled (s14 vs .)?
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
spills() { grep -A3 "Compiling entry function 'jflash_mgpu_bwd" $1 | grep -E "entry|spill stores" | sed -e 's/ptxas info    : Compiling entry function//' -e "s/_mosaic_gpu_kernel' for 'sm_90a'//" | paste - - | awk '{print $1, "stack", $2, "st", $6, "ld", $10}'; }
F=mosaic_gpu:bwd_fused=1+det=0
FO=mosaic_gpu:bwd_fused=1+bwd_overlap=1+det=0
G=128x16384x1,128x16384x0,128x2048x0
run() { # tag pythonpath labels grid secs
  MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=$2 timeout $5 python .gpu/kb.py $3 $4 > $OUT/$1.log 2>&1
  echo "== $1 ($2): $3"; summ < $OUT/$1.log; spills $OUT/$1.log
}
run base .gpu/base mosaic_gpu,$F,cudnn $G 130
run s14 .gpu/s14 mosaic_gpu,$F $G 100
run new . mosaic_gpu,$F,$FO,cudnn $G 170
run new4k . mosaic_gpu,$F,$FO,cudnn 128x4096x1,128x8192x1 120
