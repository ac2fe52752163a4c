import jax, jax.numpy as jnp, numpy as np, jflash, json, sys
from jax.experimental.mosaic.gpu import profiler
tag = sys.argv[1]
for b, n in ((8, 12), (8, 32), (32, 12), (2, 12)):
  t, h = 2048, 64
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
  row = {"tag": tag, "B": b, "N": n}
  fc = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
  fj = jax.jit(lambda q, k, v: jflash.attention(q, k, v, is_causal=True, implementation="mosaic_gpu"))
  for label, f in (("cudnn", fc), ("jflash", fj), ("cudnn2", fc), ("jflash2", fj)):
    row[label] = round(1e3 * float(np.median(profiler.measure(f, iterations=20)(q, k, v)[1])), 1)
  row["maxdiff"] = float(jnp.max(jnp.abs(fj(q, k, v).astype(jnp.float32) - fc(q, k, v).astype(jnp.float32))))
  print(json.dumps(row), flush=True)
