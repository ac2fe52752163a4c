#!/bin/bash
# Session 10 call 6: the deterministic dQ kernel's own tiles at H=64 (.gpu/e12: env JF_DQ_BQ,
# JF_DQ_BKV, JF_DQ_ST, JF_DQ_OV override its query/key tile rows, stages, S/dP overlap)
export PYTHONUNBUFFERED=1
G=64x16384x1,64x16384x0,64x2048x0,64x2048x1
dq() { python3 -c "
import sys, json
for line in sys.stdin:
  if not line.startswith('{'): continue
  r = json.loads(line); m = r['mosaic_gpu']
  if not isinstance(m, dict): print(r['H'], r['T'], int(r['causal']), str(m)[:200]); continue
  k = m['fb_k']; g = lambda s: sum(v for n, v in k.items() if s in n)
  print(r['H'], r['T'], int(r['causal']), 'dq=%.0f dkv=%.0f bk=%.0f' % (g('bwd_dq'), g('bwd_dkv'), g('bwd') + g('reduce')))"; }
for e in "JF_X=0" "JF_DQ_BQ=64" "JF_DQ_BQ=64 JF_DQ_BKV=128" "JF_DQ_BQ=64 JF_DQ_BKV=128 JF_DQ_OV=1" "JF_DQ_BQ=128 JF_DQ_ST=3" "JF_DQ_BQ=64 JF_DQ_ST=3"; do
  env $e MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/e12 timeout 100 python .gpu/kb.py mosaic_gpu $G > $OUT/v.log 2>&1
  echo "== $e"; dq < $OUT/v.log
  grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dq" $OUT/v.log | grep -E "spill" | sort | uniq -c | cut -c1-100
done
