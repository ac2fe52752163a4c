#!/bin/bash
# Session 8, call 2: native tests on 7dcbe28+ (section sizing); bench --quick before (7b270f2) / after; LM step.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or bitwise or sections" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
(cd .gpu/bs && PYTHONPATH=. timeout 110 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_before.log 2>&1; echo "rc $?" >> $OUT/quick_before.log)
PYTHONPATH=. timeout 110 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_after.log 2>&1; echo "rc $?" >> $OUT/quick_after.log
for s in before after; do echo "== $s"; grep -E "jflash:mosaic_gpu|cudnn|^rc|file" $OUT/quick_$s.log | grep -v memory | cut -c1-160; done
unset XLA_PYTHON_CLIENT_PREALLOCATE
PYTHONPATH=. timeout 150 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null > $OUT/speed.jsonl; cut -c1-300 $OUT/speed.jsonl
