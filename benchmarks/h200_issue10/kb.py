"""Per-kernel CUPTI medians (µs) of fwd and fwd+bwd (vjp), jflash mosaic_gpu variants vs cuDNN (and tokamax)."""
import sys, os, json, collections, dataclasses, jax, jax.numpy as jnp, numpy as np, jflash
from jax.experimental.mosaic.gpu import profiler
from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
impls = sys.argv[1].split(",")
grid = [tuple(int(x) for x in c.split("x")) for c in sys.argv[2].split(",")]
fwd_only = bool(os.environ.get("FWD_ONLY"))
for h, t, c in grid:
  b, n = int(os.environ.get("BT", 16384)) // t, int(os.environ.get("NH", 2048)) // h
  causal = bool(c)
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
  flops = 4 * b * n * t * t * h * (0.5 if causal else 1.0)
  row = {"H": h, "T": t, "causal": causal}
  for label in impls:
    impl, _, var = label.partition(":")
    only_f = var.endswith("~f")
    var = var.removesuffix("~f")
    if impl == "cudnn":
      att = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    elif impl == "tokamax":
      import tokamax
      att = lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=causal, implementation="mosaic")
    elif var == "nd":  # the default config with deterministic=False
      att = lambda q, k, v: jflash.attention(q, k, v, is_causal=causal, implementation="mosaic_gpu", deterministic=False)
    else:
      cfg = default_config(kernel_head_dim(h), causal, t)
      det = None
      for kv in filter(None, var.split("+")):
        key, val = kv.split("=")
        if key == "det":  # deterministic=True/False explicitly (bwd_fused with det=1: ordered dQ adds)
          det = val == "1"
          continue
        cfg = dataclasses.replace(cfg, **{key: (val == "1") if key in ("persistent", "bwd_persistent", "overlap", "bwd_fused", "bwd_overlap") else int(val)})
      det = not cfg.bwd_fused if det is None else det
      att = lambda q, k, v, cfg=cfg, det=det: jflash.attention(q, k, v, is_causal=causal, implementation="mosaic_gpu", config=cfg, deterministic=det)
    out = {}
    try:
      fns = [("f", jax.jit(att), (q, k, v))]
      if not (fwd_only or only_f):
        fns.append(("fb", jax.jit(lambda q, k, v, do: jax.vjp(att, q, k, v)[1](do)), (q, k, v, do)))
      for tag, f, args in fns:
        jax.block_until_ready(f(*args))
        runs = profiler.measure(f, aggregate=False, iterations=20)(*args)[1]
        per = collections.defaultdict(list)
        for r in runs:
          for name, ms in r:
            per[name[:48]].append(ms)
        tot = float(np.median([sum(ms for _, ms in r) for r in runs]))
        out[tag] = round(1e3 * tot, 1)
        out[tag + "_k"] = {nm: round(1e3 * float(np.median(x)), 1) for nm, x in per.items() if np.median(x) > 0.004}
      out["fwd_tf"] = round(flops / out["f"] / 1e6, 1)
      if "fb" in out:
        out["bwd_tf"] = round(2.5 * flops / (out["fb"] - out["f"]) / 1e6, 1)
    except Exception as e:
      out = f"ERR {type(e).__name__}: {str(e)[:300]}"
    row[label] = out
  print(json.dumps(row), flush=True)
