#!/usr/bin/env bash
# Issue 10 session 2, run 3: H=64 forward tile candidates; end-to-end gpt2-small tokens/s.
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 200 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/256/2/128/64/2/1,mosaic_gpu/64/192/2/128/64/2/1,mosaic_gpu/128/128/2/128/64/2/1,cudnn 64x2048x0,64x16384x1 > $OUT/h64.log 2>&1
echo "rc $?" >> $OUT/h64.log
cat $OUT/h64.log | cut -c1-900
export XLA_PYTHON_CLIENT_PREALLOCATE=true
timeout 330 python examples/lm_speed.py --steps 10 --cases jflash:2048:8 cudnn:2048:8 jflash:8192:2 cudnn:8192:2 > $OUT/lm.log 2>&1
echo "rc $?" >> $OUT/lm.log
grep -v Warning $OUT/lm.log | tail -8 | cut -c1-600
