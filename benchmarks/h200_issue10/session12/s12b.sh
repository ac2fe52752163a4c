#!/bin/bash
# Session 12 call 3: the fused backward with deterministic=True, its dQ reduce-adds
# ordered by semaphores (key block jc adds after blocks 0..jc-1). Correctness and
# bitwise reproducibility (dcheck.py), then per-kernel times against the deterministic
# pair, the unordered fused kernel (deterministic=False default) and cuDNN.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 200 python benchmarks/h200_issue10/session12/dcheck.py 2>&1 | grep -v "^W\|warn" | tail -12
MOSAIC_GPU_DUMP_PTXAS=1 timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1+det=1,mosaic_gpu:nd,cudnn 64x16384x1,64x16384x0,64x2048x0 > $OUT/h64.log 2>&1
echo "== H64: pair, ordered fused, nd, cudnn"; summ < $OUT/h64.log
grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/h64.log | grep -E "spill" | sort | uniq -c | cut -c1-120
NH=768 timeout 100 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1+det=1+bwd_block_q=64,mosaic_gpu:nd,cudnn 64x8192x1 > $OUT/lm8k.log 2>&1
echo "== gpt2-small shape T=8k: pair, ordered fused (64-q), nd, cudnn"; summ < $OUT/lm8k.log
timeout 100 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1+det=1+bwd_block_q=64,mosaic_gpu:nd,cudnn 64x4096x1,64x8192x1 > $OUT/h64b.log 2>&1
echo "== H64 4k/8k causal: pair, ordered fused (64-q), nd, cudnn"; summ < $OUT/h64b.log
