export PYTHONPATH=.
export JFLASH_EXP_FUSED_QKV=1
for flags in "" "--xla_gpu_enable_cublaslt=true" "--xla_gpu_enable_triton_gemm=false" "--xla_gpu_enable_cublaslt=true --xla_gpu_enable_triton_gemm=false"; do
  XLA_FLAGS="$flags" timeout 80 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 2>/dev/null | sed "s/^/flags=[$flags] /" | cut -c1-330
done
