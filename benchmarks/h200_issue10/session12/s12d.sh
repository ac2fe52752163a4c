#!/bin/bash
# Session 12 call 5: the ordered fused backward without L2 sections (so that few key
# blocks of a pair run at once), counting each add at the consumer's next one (tree) or
# right after it completes (JF_IMM=1, .gpu/e16 = the tree with that env switch).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for imm in "" 1; do
  JF_IMM=$imm PYTHONPATH=.gpu/e16 timeout 120 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1+det=1,cudnn 64x16384x1,64x16384x0 > $OUT/h64_imm$imm.log 2>&1
  echo "== imm=$imm H64: pair, ordered fused, cudnn"; summ < $OUT/h64_imm$imm.log
  JF_IMM=$imm NH=768 PYTHONPATH=.gpu/e16 timeout 100 python .gpu/kb.py mosaic_gpu:bwd_fused=1+det=1+bwd_block_q=64 64x8192x1 > $OUT/lm8k_imm$imm.log 2>&1
  echo "== imm=$imm gpt2-small T=8k: ordered fused (64-q)"; summ < $OUT/lm8k_imm$imm.log
done
