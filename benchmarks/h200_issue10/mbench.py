"""Quick Mosaic GPU vs cuDNN (and triton) timing: fwd and fwd+bwd, TFLOP/s, CUPTI medians."""
import sys, json, jax, jax.numpy as jnp, numpy as np, jflash
from jax.experimental.mosaic.gpu import profiler
impls = sys.argv[1].split(",")
grid = [tuple(int(x) for x in c.split("x")) for c in sys.argv[2].split(",")]  # H x T x causal
iters = 20
res = []
def tf(flops, ms): return flops / ms / 1e9
for h, t, c in grid:
  import os
  b, n = 16384 // t, int(os.environ.get("NH", 2048)) // h  # NH=768: the gpt2-small LM's heads
  causal = bool(c)
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
  flops = 4 * b * n * t * t * h * (0.5 if causal else 1.0)
  row = {"H": h, "T": t, "causal": causal}
  for label in impls:
    impl = label
    det = True
    if impl.endswith(":nd"):  # deterministic=False (the fused backward)
      impl, det = impl[:-3], False
    if impl == "tokamax":
      import tokamax
      att = lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=causal, implementation="mosaic")
    elif impl == "cudnn":
      att = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    else:
      cfg = None
      if impl.endswith((":np", ":ov", ":pl", ":fu")):  # default tiles; :np one CTA per work item, :ov overlap, :pl no overlap
        import dataclasses
        from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
        impl, variant = impl[:-3], impl[-2:]
        cfg = default_config(kernel_head_dim(h), causal, t)
        cfg = (dataclasses.replace(cfg, persistent=False, bwd_persistent=False) if variant == "np"
               else dataclasses.replace(cfg, bwd_fused=True) if variant == "fu"
               else dataclasses.replace(cfg, overlap=False) if variant == "pl"
               else dataclasses.replace(cfg, overlap=True))
        if variant == "fu":
          det = False
      if "/" in impl:  # mosaic_gpu/bq/bkv/stages/bbq/bbkv/bst[/persistent 0|1]
        impl, *nums = impl.split("/")
        nums = [int(x) for x in nums]
        cfg = jflash.MosaicGpuConfig(*nums[:6], *map(bool, nums[6:]))  # 7th: persistent
      att = lambda q, k, v, impl=impl, cfg=cfg: jflash.attention(q, k, v, is_causal=causal, implementation=impl, config=cfg, deterministic=det)
    fwd = jax.jit(att)
    fb = jax.jit(lambda q, k, v, do: jax.vjp(att, q, k, v)[1](do))
    try:
      tf_ = [profiler.measure(fwd, iterations=iters)(q, k, v)[1] for _ in range(1)]
      ms_f = float(np.median(tf_[0])) if hasattr(tf_[0], "__len__") else float(tf_[0])
      import os
      if os.environ.get("FWD_ONLY"):
        ms_b = 2 * ms_f
      else:
        tb_ = profiler.measure(fb, iterations=iters)(q, k, v, do)[1]
        ms_b = float(np.median(tb_)) if hasattr(tb_, "__len__") else float(tb_)
      row[label] = (round(tf(flops, ms_f), 1), round(tf(2.5 * flops, ms_b - ms_f), 1), round(ms_f, 4), round(ms_b, 4))
    except Exception as e:
      row[label] = f"ERR {type(e).__name__}: {str(e)[:300]}"
  print(json.dumps(row), flush=True)
