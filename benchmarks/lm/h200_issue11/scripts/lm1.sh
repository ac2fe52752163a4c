set -x
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv
python -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__)"
timeout 420 python benchmarks/lm/profile_step.py --cases plain:cudnn example:cudnn example:jflash --trace $OUT/trace > $OUT/profile.jsonl 2> $OUT/profile.err
tail -3 $OUT/profile.err
cut -c1-600 $OUT/profile.jsonl
rm -rf $OUT/trace/*/plugins/profile/*/*.xplane.pb
du -sh $OUT/trace
