import jax, jax.numpy as jnp, numpy as np, jflash, json
from jax.experimental.mosaic.gpu import profiler
from jflash.kernels.mosaic_gpu import common
for b, n in ((8, 12), (8, 32), (32, 12)):
  t, h = 2048, 64
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
  row = {"B": b, "N": n}
  f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"))
  row["cudnn"] = round(1e3 * float(np.median(profiler.measure(f, iterations=20)(q, k, v)[1])), 1)
  for label, budget in (("12MiB", 12 * 2**20), ("all", 2**40), ("pair", 1), ("3MiB", 3 * 2**20)):
    common.L2_BUDGET = budget
    f = jax.jit(lambda q, k, v: jflash.attention(q, k, v, is_causal=True, implementation="mosaic_gpu"))
    row[label] = round(1e3 * float(np.median(profiler.measure(f, iterations=20)(q, k, v)[1])), 1)
  print(json.dumps(row), flush=True)
