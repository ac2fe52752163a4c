# summ: one line per case of kb.py's JSON: backward kernels' µs (all but the forward) per label
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
