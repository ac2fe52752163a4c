#!/bin/bash
# Session 8 call 6: why H128/H256 causal forwards lost 1.5-2.5% with the new mask: ptxas info and timing, before (b58aaea) / after / hoist (old-form causal compare, no length compares)
export PYTHONUNBUFFERED=1 FWD_ONLY=1
for tag in before after hoist before after hoist; do
  case $tag in before) P=.gpu/bh;; after) P=.;; hoist) P=.gpu/exp2;; esac
  echo "== $tag"
  JFLASH_EXP=$tag MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=$P timeout 80 python .gpu/mbench.py mosaic_gpu 256x2048x1,128x2048x1,256x16384x1,128x16384x1,64x2048x1 > $OUT/ptxas_$tag.log 2>&1
  grep -E "^\{|Used|spill stores" $OUT/ptxas_$tag.log | grep -v "^ " | sort | uniq -c | cut -c1-200
done
