#!/usr/bin/env bash
# Issue 10 session 2, run 2: persistent forward (snake) and backward; native tests, then timing.
export PYTHONPATH=.:.tk XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 320 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py tests/test_variants.py tests/test_attention.py -k mosaic -rfE > $OUT/tests.log 2>&1
echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^E  " $OUT/tests.log | head -30
timeout 255 python .gpu/mbench.py cudnn,mosaic_gpu,mosaic_gpu:np,tokamax 128x2048x0,128x16384x1,256x16384x1,64x2048x0,128x16384x0,256x2048x0,128x2048x1,64x16384x1,128x1024x0,128x512x0 > $OUT/bench.log 2>&1
echo "rc $?" >> $OUT/bench.log
tail -12 $OUT/bench.log
