# For nvidia-h200-x2 (not lent in issue 11's session 2): tokens/s on 1 vs 2 GPUs at T=2048
# (equal per-GPU batch, and equal global batch), then the longest T at B=1 per GPU.
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for dev in 1 2; do
  timeout 150 python examples/lm_speed.py --steps 30 --cases cudnn:2048:$((8*dev)) jflash:2048:$((8*dev)) -- --devices $dev 2>/dev/null | sed "s/^/devices=$dev /"
done
timeout 100 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 -- --devices 2 2>/dev/null | sed "s/^/devices=2 equal-global /"
timeout 200 python examples/lm_speed.py --longest jflash --min-seq-len 131072 --max-seq-len 262144 -- --devices 1 2>/dev/null
