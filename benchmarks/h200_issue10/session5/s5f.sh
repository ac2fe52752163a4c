#!/bin/bash
# Session 5, call 6: intra-warpgroup overlap for causal forwards (own range non-empty).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 170 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "overlapped_softmax_native and causal" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
G=256x2048x1,256x4096x1,256x16384x1,192x4096x1,128x2048x1,128x16384x1,64x2048x1,64x16384x1
for i in 1 2; do
FWD_ONLY=1 PYTHONPATH=. timeout 90 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov,cudnn $G > $OUT/ov$i.log 2>&1; echo "rc $?" >> $OUT/ov$i.log
grep -v -i "warn" $OUT/ov$i.log | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; done
