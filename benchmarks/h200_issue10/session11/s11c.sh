#!/bin/bash
# Session 11 call 3. Issue 10: the fused backward (deterministic=False) at causal H=64 with
# 128-query tiles (the "alternate" share halved the per-row cost since session 9's
# measurement of these tiles) against the default (64-query tiles at causal T > 4k) and cuDNN.
# Issue 11: the gpt2-small step with cuDNN, traced, with its optimized HLO (names -> ops).
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
F=mosaic_gpu:bwd_fused=1+bwd_block_q=128
MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=. timeout 120 python .gpu/kb.py mosaic_gpu:nd,$F,cudnn 64x16384x1,64x8192x1,64x4096x1 > $OUT/f128.log 2>&1
echo "== nd, fused 128-query tiles, cudnn"; summ < $OUT/f128.log
grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/f128.log | grep -E "spill" | sort | uniq -c | cut -c1-120
NH=768 PYTHONPATH=. timeout 60 python .gpu/kb.py mosaic_gpu:nd,$F,cudnn 64x8192x1,64x4096x1 > $OUT/f128_lm.log 2>&1
echo "== LM shape: nd, fused 128-query tiles, cudnn"; summ < $OUT/f128_lm.log
PYTHONPATH=. timeout 150 python benchmarks/lm/profile_step.py --cases example:cudnn --trace /tmp/trace --top 120 --hlo $OUT/hlo > $OUT/profile.jsonl 2> $OUT/profile.err
head -c 400 $OUT/profile.jsonl; ls -la $OUT/hlo | head
