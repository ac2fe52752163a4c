#!/bin/bash
# Session 12 call 1: the fused backward's "split" share (one key tile per CTA; consumer
# 1 hands dS to consumer 0, which adds dQ = dS K by fp32 TMA reduce-adds) against the
# deterministic pair and cuDNN. H=256 and 192 (where it is the share bwd_fused picks),
# H=128 forced (.gpu/e15 = this tree with env JF_SHARE) against "cols". ptxas spills of
# the fused kernel. Then the native fused tests (H > 128 included now).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
spills() { grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $1 | grep -E "spill" | sort | uniq -c | cut -c1-120; }
MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=. timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1,cudnn 256x16384x1,256x16384x0,256x2048x1,256x2048x0 > $OUT/h256.log 2>&1
echo "== H256: pair, split fused, cudnn"; summ < $OUT/h256.log; spills $OUT/h256.log
PYTHONPATH=. timeout 80 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1,cudnn 192x16384x1,192x2048x0 > $OUT/h192.log 2>&1
echo "== H192: pair, split fused, cudnn"; summ < $OUT/h192.log
JF_SHARE=split MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e15 timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1,cudnn 128x16384x1,128x16384x0,128x2048x1,128x2048x0 > $OUT/h128_split.log 2>&1
echo "== H128: pair, split fused (forced), cudnn"; summ < $OUT/h128_split.log; spills $OUT/h128_split.log
PYTHONPATH=. timeout 100 python .gpu/kb.py mosaic_gpu:bwd_fused=1 128x16384x1,128x16384x0,128x2048x1,128x2048x0 > $OUT/h128_cols.log 2>&1
echo "== H128: cols fused"; summ < $OUT/h128_cols.log
JF_SHARE=split PYTHONPATH=.gpu/e15 timeout 60 python .gpu/kb.py mosaic_gpu:bwd_fused=1,mosaic_gpu:nd,cudnn 64x16384x1,64x2048x0 > $OUT/h64_split.log 2>&1
echo "== H64: split fused (forced), default nd, cudnn"; summ < $OUT/h64_split.log
PYTHONPATH=. timeout 200 python -m pytest -q -p no:benchmark -p no:cacheprovider -n 16 tests/test_mosaic_gpu.py -k "fused_backward" > $OUT/tests.log 2>&1
tail -5 $OUT/tests.log
