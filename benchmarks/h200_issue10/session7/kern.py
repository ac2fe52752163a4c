import jax, jax.numpy as jnp, numpy as np, jflash, json, collections
from jax.experimental.mosaic.gpu import profiler
for b, n in ((8, 12), (8, 32), (2, 12), (1, 12), (32, 12)):
  t, h = 2048, 64
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
  row = {"B": b, "N": n}
  for impl in ("cudnn", "mosaic_gpu"):
    f = (jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
         if impl == "cudnn" else jax.jit(lambda q, k, v: jflash.attention(q, k, v, is_causal=True, implementation="mosaic_gpu")))
    f(q, k, v).block_until_ready()
    runs = profiler.measure(f, aggregate=False, iterations=20)(q, k, v)[1]
    per = collections.defaultdict(list)
    for r in runs:
      for name, ms in r: per[name[:60]].append(ms)
    row[impl] = {name: round(1e3 * float(np.median(v)), 1) for name, v in per.items()}
  print(json.dumps(row), flush=True)
