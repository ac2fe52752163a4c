export PYTHONPATH=.
timeout 420 python benchmarks/lm/profile_step.py --cases plain:cudnn example:cudnn example:jflash --trace /tmp/trace > $OUT/profile.jsonl 2> $OUT/profile.err
tail -3 $OUT/profile.err
python - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/profile.jsonl'):
  d = json.loads(l)
  if 'processes' not in d: print(d); continue
  for p, v in d['processes'].items():
    print(d['case'], p, {k: v[k] for k in v if k != 'top_ms'})
    for t in v['top_ms']: print('    ', t)
P
