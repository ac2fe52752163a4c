#!/bin/bash
# Session 8 call 5 (tree c128814): the papers' grid vs cuDNN and tokamax (one process); before/after at H128/H256 16k causal; LM step.
export PYTHONUNBUFFERED=1
PYTHONPATH=.:.tk timeout 250 python .gpu/mbench.py mosaic_gpu,cudnn,tokamax 64x2048x0,64x2048x1,64x16384x0,64x16384x1,128x2048x0,128x2048x1,128x16384x0,128x16384x1,256x2048x0,256x2048x1,256x16384x0,256x16384x1 > $OUT/grid.log 2>&1; echo "rc $?" >> $OUT/grid.log
cat $OUT/grid.log | grep -v Warn | cut -c1-400
for tag in before after; do
  if [ $tag = before ]; then P=.gpu/bh; else P=.; fi
  echo "== $tag"; PYTHONPATH=$P timeout 60 python .gpu/mbench.py mosaic_gpu 128x16384x1,256x16384x1 2>&1 | grep "^{"
done
PYTHONPATH=. timeout 150 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null > $OUT/speed.jsonl; cut -c1-300 $OUT/speed.jsonl
