#!/bin/bash
# Session 6, call 4: overlap by default at H > 64 (unmasked run only); static empty runs.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
ROOT=$(pwd)
PYTHONPATH=. timeout 225 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or (other_forward_loop_native and (window or offset or segments or gqa))" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
show() { grep -v -i "warn" $1 | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[:2]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; }
G=64x2048x1,96x2048x1,128x2048x1,192x2048x1,256x2048x1,128x16384x1,256x16384x1,128x2048x0,256x2048x0,128x16384x0,256x16384x0
B=64x16384x1,128x2048x1,256x16384x1,128x2048x0
FWD_ONLY=1 PYTHONPATH=. timeout 85 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:pl,cudnn $G > $OUT/after_fwd.log 2>&1; echo "== after fwd"; show $OUT/after_fwd.log
(cd .gpu/before && FWD_ONLY=1 PYTHONPATH=. timeout 60 python $ROOT/.gpu/mbench.py mosaic_gpu $G > $OUT/before_fwd.log 2>&1); echo "== before fwd"; show $OUT/before_fwd.log
(cd .gpu/before && PYTHONPATH=. timeout 60 python $ROOT/.gpu/mbench.py mosaic_gpu $B > $OUT/before_bwd.log 2>&1); echo "== before bwd"; show $OUT/before_bwd.log
PYTHONPATH=. timeout 60 python .gpu/mbench.py mosaic_gpu $B > $OUT/after_bwd.log 2>&1; echo "== after bwd"; show $OUT/after_bwd.log
