export PYTHONPATH=.
mkdir -p /tmp/hlo
timeout 200 python benchmarks/lm/profile_step.py --cases example:cudnn example:jflash --trace /tmp/trace --hlo /tmp/hlo --top 400 > $OUT/profile.jsonl 2> /tmp/profile.err
tail -2 /tmp/profile.err
(cd /tmp && tar czf $OUT/hlo.tgz hlo)
for fused in 0 1; do
  JFLASH_EXP_FUSED_QKV=$fused timeout 150 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 jflash:8192:2 2>/dev/null | sed "s/^/fused=$fused /"
done
