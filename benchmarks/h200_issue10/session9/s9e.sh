#!/bin/bash
# Session 9 call 5: dK/dV L2 sections at H=64 (.gpu/e9 env JFLASH_DKV_GROUP: 0 = none (old), 1, 3, 6), ABAB, per-kernel µs
export PYTHONUNBUFFERED=1
for pass in 1 2; do for g in 0 1 3 6; do
  echo "== g=$g pass $pass"
  JFLASH_DKV_GROUP=$g PYTHONPATH=.gpu/e9 timeout 60 python .gpu/kb.py mosaic_gpu 64x16384x1,64x8192x1 2>&1 | grep "^{" | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); m = r['mosaic_gpu']; print(r['H'], r['T'], {k[12:20]: v for k, v in m['fb_k'].items() if v > 100})"
  JFLASH_DKV_GROUP=$g NH=768 BT=16384 PYTHONPATH=.gpu/e9 timeout 40 python .gpu/kb.py mosaic_gpu 64x8192x1 2>&1 | grep "^{" | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); m = r['mosaic_gpu']; print('LM', r['H'], r['T'], {k[12:20]: v for k, v in m['fb_k'].items() if v > 100})"
done; done
