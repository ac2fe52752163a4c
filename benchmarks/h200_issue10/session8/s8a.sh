export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import jax; print(jax.__version__)"
bash benchmarks/h200_issue10/session7/s7b.sh 2>&1 | tee $OUT/s7b.log
timeout 280 python -m pytest -n 16 -q tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or bitwise or sections" > $OUT/tests.log 2>&1; echo "pytest rc=$?"; tail -15 $OUT/tests.log
