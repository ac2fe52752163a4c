#!/bin/bash
# Issue 10 session 15, second call (after s15a.sh; same .gpu preparation): H = 64 and 256
# before and after, the asynchronous step at H = 64's 128-query tiles (bwd_overlap=1:
# session 4 measured 0.7x with 300-1100 B of spills; ptxas on the CPU now says 0 B), the
# forward at H = 256 (HEAD forms the query tile's descriptors in the step past H = 128:
# 40-80 B of spills -> 0 at T = 16k), and the forward at T = 512 and 1k (owed since session
# 9: the target is >= 0.9x cuDNN). Also the H = 64 forward overlapped with 128-key tiles
# (session 6 saw the overlap lose 2-45% with 256-key tiles, which ptxas on the CPU now
# shows spilling 240-656 B; with 128-key tiles 0 B).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
spills() { grep -A3 "Compiling entry function 'jflash_mgpu_" $1 | grep -E "entry|spill stores" | sed -e 's/ptxas info    : Compiling entry function//' -e "s/_mosaic_gpu_kernel' for 'sm_90a'//" | paste - - | awk '{print $1, "stack", $2, "st", $6, "ld", $10}'; }
fwd() { python3 -c "
import sys, json
for line in sys.stdin:
  if line.startswith('{'):
    r = json.loads(line); print(r['H'], r['T'], int(r['causal']), *[f\"{k}: fwd {v['f']} us {v['fwd_tf']} TF\" for k, v in r.items() if isinstance(v, dict)], sep=' | ')"; }
run() { # tag pythonpath labels grid secs
  MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=$2 timeout $5 python .gpu/kb.py $3 $4 > $OUT/$1.log 2>&1
  echo "== $1 ($2): $3"; [ -n "$FWD_ONLY" ] || summ < $OUT/$1.log; fwd < $OUT/$1.log; spills $OUT/$1.log
}
G64=64x16384x1,64x2048x0,64x4096x1
run base64 .gpu/base mosaic_gpu,mosaic_gpu:nd,cudnn $G64 110
run new64 . mosaic_gpu,mosaic_gpu:bwd_overlap=1,mosaic_gpu:nd,cudnn $G64 140
G256=256x16384x1,256x16384x0,256x2048x0
run base256 .gpu/base mosaic_gpu,cudnn $G256 100
run new256 . mosaic_gpu,cudnn $G256 100
FWD_ONLY=1 run fwd64 . mosaic_gpu,mosaic_gpu:overlap=1+block_kv=128,cudnn 64x2048x0,64x16384x0 60
FWD_ONLY=1 run short . mosaic_gpu,cudnn 64x512x0,64x512x1,64x1024x0,64x1024x1,128x512x1,128x1024x1,256x512x0,256x512x1,256x1024x0,256x1024x1 100
