#!/usr/bin/env bash
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 540 python -m pytest -n 16 -q -p no:cacheprovider "$@" -rfE > $OUT/suite.log 2>&1
echo "rc $?" >> $OUT/suite.log
grep -E "^FAILED|^ERROR|passed|failed|^E  " $OUT/suite.log | head -40
