#!/bin/bash
# Session 5, last call: native tests on the final tree; bench --quick before (d6b4c15, session start) / after.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
PYTHONPATH=. timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or bitwise or named_barrier" -rfE > $OUT/tests_last.log 2>&1; echo "rc $?" >> $OUT/tests_last.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests_last.log | tail -3
(cd .gpu/before && PYTHONPATH=. timeout 120 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_before.log 2>&1; echo "rc $?" >> $OUT/quick_before.log)
PYTHONPATH=. timeout 120 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_after.log 2>&1; echo "rc $?" >> $OUT/quick_after.log
for s in before after; do echo "== $s"; grep -E "jflash:mosaic_gpu|cudnn|^rc|file" $OUT/quick_$s.log | grep -v memory | cut -c1-160; done
