#!/bin/bash
# Session 9 call 6: native tests of the long causal case (non-persistent forward, sections in all kernels) and the default configs
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 300 python -m pytest -n 8 -q -p no:cacheprovider tests/test_mosaic_gpu.py tests/test_gpu.py -k "long or default_config or one_cta or sections" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -8
