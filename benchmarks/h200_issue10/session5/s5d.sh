#!/bin/bash
# Session 5, call 4: forward, next key tile waited inside the PV product; ABAB vs b942209.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 FWD_ONLY=1
GRID=64x2048x1,64x2048x0,128x2048x0,128x2048x1,256x2048x0,256x2048x1,64x16384x1,128x16384x0,128x16384x1,256x16384x1,256x16384x0
PYTHONPATH=. timeout 100 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -3
PYTHONPATH=.:.tk timeout 110 python .gpu/mbench.py mosaic_gpu,cudnn,tokamax $GRID > $OUT/after.log 2>&1; echo "rc $?" >> $OUT/after.log
(cd .gpu/before && PYTHONPATH=. timeout 70 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/before.log 2>&1; echo "rc $?" >> $OUT/before.log)
PYTHONPATH=. timeout 70 python .gpu/mbench.py mosaic_gpu,cudnn $GRID > $OUT/after2.log 2>&1; echo "rc $?" >> $OUT/after2.log
(cd .gpu/before && PYTHONPATH=. timeout 70 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/before2.log 2>&1; echo "rc $?" >> $OUT/before2.log)
for f in after before after2 before2; do echo "== $f"; grep -v -i "warn" $OUT/$f.log | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) for k, v in r.items() if isinstance(v, list)])
"; done
