#!/bin/bash
# Session 6, call 5: no O rescale in the first overlapped step when nothing came before.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
show() { grep -v -i "warn" $1 | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[:2]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; }
G=128x2048x1,256x2048x1,192x2048x1,128x4096x1,256x4096x1,128x8192x1,256x8192x1,128x16384x1,256x16384x1
FWD_ONLY=1 PYTHONPATH=. timeout 75 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:pl $G > $OUT/fwd.log 2>&1; echo "== fwd"; show $OUT/fwd.log
PYTHONPATH=. timeout 110 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native and (causal-h128 or causal-h256 or segments or window or offset)" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "Benchmark|warner|bringing|^$" $OUT/tests.log | tail -4
