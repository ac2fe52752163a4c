export PYTHONPATH=.
timeout 150 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null > $OUT/speed.jsonl; cut -c1-300 $OUT/speed.jsonl
timeout 100 python benchmarks/lm/profile_step.py --cases example:cudnn --trace /tmp/trace --top 60 > $OUT/profile.jsonl 2>/dev/null; head -c 300 $OUT/profile.jsonl
for seed in 0 1; do
  timeout 120 python examples/train_lm.py --preset gpt2-small --attention cudnn --steps 300 --eval-every 150 --gen-bytes 0 --seed $seed --out-dir /tmp/loss_s$seed > /tmp/loss_s$seed.log 2>&1
  grep -o 'step [0-9]*: train loss [0-9.]*, validation loss [0-9.]*' /tmp/loss_s$seed.log
  cp /tmp/loss_s$seed/metrics.json $OUT/loss_after_final_s$seed.json
done
