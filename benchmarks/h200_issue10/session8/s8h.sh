#!/bin/bash
# Session 8 call 8: native tests after the oracle-side broadcast fix (kernels unchanged since call 7)
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or sections" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -6
