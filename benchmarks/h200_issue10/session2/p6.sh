#!/usr/bin/env bash
# Issue 10 session 2, run 6 (final tree): mosaic tests natively, then the overlap default at H=256.
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 380 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py tests/test_attention.py tests/test_variants.py -k mosaic -rfE > $OUT/tests.log 2>&1
echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^E  " $OUT/tests.log | head -20
timeout 150 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/64/2/64/64/2/1,cudnn 256x2048x0,256x16384x0,256x4096x0 > $OUT/bench.log 2>&1
echo "rc $?" >> $OUT/bench.log
cut -c1-400 $OUT/bench.log
