#!/usr/bin/env bash
# Issue 10 session 2, run 5: intra-warpgroup overlap (config overlap=True): native correctness, timing.
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k overlapped -rfE -x > $OUT/tests.log 2>&1
echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^E  " $OUT/tests.log | head -20
timeout 200 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov,cudnn 128x16384x0,128x2048x0,128x16384x1,64x2048x1,256x2048x0,256x16384x1 > $OUT/bench.log 2>&1
echo "rc $?" >> $OUT/bench.log
cut -c1-400 $OUT/bench.log
