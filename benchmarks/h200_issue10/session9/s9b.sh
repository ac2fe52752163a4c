#!/bin/bash
# Session 9 call 2: head-major causal order (sections of one pair) in forward, dK/dV and dQ kernels (.gpu/e9, env) vs the tree, ABAB; per-kernel µs
export PYTHONUNBUFFERED=1
G="64x16384x1,128x16384x1,256x16384x1,128x4096x1"
for tag in tree hm tree hm; do
  echo "== $tag"
  if [ $tag = tree ]; then P=.; E=""; L="mosaic_gpu,mosaic_gpu:persistent=0~f"; else P=.gpu/e9; E="JFLASH_FWD_GROUP=1 JFLASH_DKV_GROUP=1 JFLASH_DQ_GROUP=1"; L="mosaic_gpu,mosaic_gpu:persistent=0~f"; fi
  [ -z "$C" ] && L="$L,cudnn" && C=1
  env $E PYTHONPATH=$P timeout 130 python .gpu/kb.py $L $G > $OUT/b_$tag$C.log 2>&1; C=$((C+1))
  grep "^{" $OUT/b_$tag$((C-1)).log | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); out = [r['H'], r['T']]
  for lab, m in r.items():
    if not isinstance(m, dict): continue
    out.append(lab + ' f=' + str(m['f']) + ' ' + ' '.join(f'{k[7:22]}={v}' for k, v in m.get('fb_k', {}).items() if v > 100))
  print(*out, sep=' | ')"
done
