export PYTHONPATH=.
python -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__)"
timeout 200 python benchmarks/lm/profile_step.py --cases before:cudnn example:cudnn --before .gpu/before/examples --trace /tmp/trace --hlo $OUT/hlo > $OUT/profile.jsonl 2> $OUT/profile.err
tail -2 $OUT/profile.err
python - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/profile.jsonl'):
  d = json.loads(l)
  if 'processes' not in d: print(d); continue
  for p, v in d['processes'].items():
    if 'GPU' not in p: continue
    print(d['case'], p, {k: v[k] for k in v if k != 'top_ms'})
    for t in v['top_ms'][:30]: print('    ', t[0][:60], t[1], (t[2] or {}).get('hlo_op'))
P
for seed in 0 1; do
  timeout 150 python .gpu/before/examples/train_lm.py --preset gpt2-small --attention cudnn --steps 300 --eval-every 150 --gen-bytes 0 --seed $seed --out-dir $OUT/loss_before_s$seed > $OUT/loss_before_s$seed.log 2>&1
  timeout 150 python examples/train_lm.py --preset gpt2-small --attention cudnn --steps 300 --eval-every 150 --gen-bytes 0 --seed $seed --out-dir $OUT/loss_after_s$seed > $OUT/loss_after_s$seed.log 2>&1
  tail -2 $OUT/loss_before_s$seed.log $OUT/loss_after_s$seed.log | cut -c1-200
done
timeout 200 python examples/lm_speed.py --steps 20 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 > $OUT/speed.jsonl 2> $OUT/speed.err
cat $OUT/speed.jsonl; tail -2 $OUT/speed.err
