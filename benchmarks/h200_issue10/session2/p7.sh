#!/usr/bin/env bash
# Final: jflash.bench --quick before (c3aae52, session start) / after, same call; native tests.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
for side in before after; do
  dir=.; [ $side = before ] && dir=.gpu/before
  PYTHONPATH=$dir timeout 95 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_$side.log 2>&1
  echo "rc $?" >> $OUT/quick_$side.log
  echo "== $side"; grep -v -i "warn" $OUT/quick_$side.log | tail -14 | cut -c1-160
done
PYTHONPATH=. timeout 250 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -rfE > $OUT/tests.log 2>&1
echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^E  |^rc" $OUT/tests.log | head
