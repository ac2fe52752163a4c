#!/bin/bash
# Session 9 call 12: native fused-backward tests (overlapped fused at H=64 now) and the deterministic=False default vs True, per kernel
export PYTHONUNBUFFERED=1
summ() { python3 -c "
import sys, json
for line in sys.stdin:
  if not line.startswith('{'): continue
  r = json.loads(line); out = [r.get('H'), r.get('T'), int(r.get('causal'))]
  for lab, m in r.items():
    if not isinstance(m, dict):
      if lab not in ('H','T','causal'): out.append(lab + ' ' + str(m)[:150])
      continue
    bk = sum(v for k, v in m['fb_k'].items() if not any(x in k for x in ('fwd', 'fpro')))
    out.append(lab.replace('mosaic_gpu', 'm') + ' bk=%.0f' % bk)
  print(*out, sep=' | ')"; }
PYTHONPATH=. timeout 100 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn 64x16384x1,64x16384x0,64x8192x1 > $OUT/nd.log 2>&1; summ < $OUT/nd.log
NH=768 BT=16384 PYTHONPATH=. timeout 50 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn 64x8192x1 > $OUT/nd_lm.log 2>&1; summ < $OUT/nd_lm.log
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "fused_backward_native or backward_kernels or default_backward" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -5
