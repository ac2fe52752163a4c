#!/bin/bash
# Session 10 call 3: (1) the gpt2-small step at T=8192 profiled, cuDNN vs jflash (where the
# ~1% outside the attention kernels goes); (2) the fused backward ("alternate" dQ share, the
# tree) at T <= 4k, H=64, default tiles and 128-query tiles, vs the two kernels and cuDNN
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
G=64x2048x0,64x2048x1,64x4096x0,64x4096x1
PYTHONPATH=. timeout 200 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1,mosaic_gpu:bwd_fused=1+bwd_block_q=128,cudnn $G > $OUT/short.log 2>&1
echo "== H64 T<=4k: det two kernels, fused default tiles, fused 128-query tiles, cuDNN"; summ < $OUT/short.log
NH=768 PYTHONPATH=. timeout 100 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,mosaic_gpu:bwd_fused=1+bwd_block_q=128,cudnn 64x2048x1,64x8192x1 > $OUT/lm_shape.log 2>&1
echo "== LM shape (N=12): det, nd, fused 128-query, cuDNN"; summ < $OUT/lm_shape.log
PYTHONPATH=. timeout 300 python benchmarks/lm/profile_step.py --cases example:cudnn example:jflash --seq-len 8192 --batch-size 2 --trace /tmp/tr --top 60 > $OUT/profile_8k.jsonl 2> $OUT/profile_8k.err
grep step_ms $OUT/profile_8k.jsonl; tail -3 $OUT/profile_8k.err
