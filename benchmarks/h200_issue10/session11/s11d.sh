#!/bin/bash
# Session 11 call 4. Issue 10: the causal fused backward at H=64 with 128-query tiles (call 3:
# 16k 6139 vs 6607 µs with 64-query tiles), second pass and more shapes; 2 stages at T <= 4k.
# Issue 11: the example's --bench at T=2048 (cuDNN, jflash), three rounds.
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
F=mosaic_gpu:bwd_fused=1+bwd_block_q=128+bwd_num_stages=2
F64=mosaic_gpu:bwd_fused=1+bwd_block_q=64+bwd_num_stages=2
MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=. timeout 120 python .gpu/kb.py mosaic_gpu:nd,$F,$F64,cudnn 64x16384x1,64x4096x1,64x2048x1 > $OUT/f128b.log 2>&1
echo "== nd, fused 128, fused 64 (2 stages), cudnn"; summ < $OUT/f128b.log
grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/f128b.log | grep -E "spill" | sort | uniq -c | cut -c1-120
NH=768 PYTHONPATH=. timeout 60 python .gpu/kb.py mosaic_gpu:nd,$F,cudnn 64x16384x1,64x8192x1 > $OUT/f128b_lm.log 2>&1
echo "== NH=768 (gpt2-small heads): nd, fused 128, cudnn"; summ < $OUT/f128b_lm.log
BT=32768 PYTHONPATH=. timeout 60 python .gpu/kb.py mosaic_gpu:nd,$F,cudnn 64x32768x1 > $OUT/f128b_32k.log 2>&1
echo "== T=32k B=1: nd, fused 128, cudnn"; summ < $OUT/f128b_32k.log
for r in 1 2 3; do
  PYTHONPATH=. timeout 80 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 2>/dev/null | tee -a $OUT/lm2048.jsonl | python3 -c "
import sys, json
for l in sys.stdin: r = json.loads(l); print(r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2))"
done
