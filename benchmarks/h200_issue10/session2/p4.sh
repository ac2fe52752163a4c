#!/usr/bin/env bash
# Issue 10 session 2, run 4: backward ring depth 3; forward key tiles of 192 at H=128.
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 170 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/128/2/64/64/3/1,mosaic_gpu/64/192/2/64/64/2/1,cudnn 128x16384x0,128x16384x1,128x2048x1 > $OUT/h128.log 2>&1
echo "rc $?" >> $OUT/h128.log
cut -c1-700 $OUT/h128.log
timeout 100 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/64/2/64/64/3/1,cudnn 256x16384x1,256x2048x0 > $OUT/h256.log 2>&1
echo "rc $?" >> $OUT/h256.log
cut -c1-700 $OUT/h256.log
timeout 80 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/128/2/128/64/3/1,cudnn 64x16384x1 > $OUT/h64.log 2>&1
echo "rc $?" >> $OUT/h64.log
cut -c1-700 $OUT/h64.log
