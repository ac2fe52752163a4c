#!/bin/bash
# Session 10 call 11: python -m jflash.bench --quick before (ae6526c, .gpu/before10) and after (the tree), one call
export PYTHONUNBUFFERED=1
for side in before after; do
  P=.; [ $side = before ] && P=.gpu/before10
  PYTHONPATH=$P timeout 140 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_$side.log 2>&1; echo "$side rc $?"
  grep -E "jflash:mosaic_gpu|cudnn" $OUT/quick_$side.log | grep -v memory | cut -c1-160
done
