"""Gradients of jflash (given config, deterministic=False) vs cuDNN and vs an fp32 XLA reference: max abs errors."""
import dataclasses, jax, jax.numpy as jnp, jflash
from jflash.kernels.mosaic_gpu.config import default_config
b, t, n, h = 1, 4096, 4, 64
ks = jax.random.split(jax.random.key(3), 4)
q, k, v, do = (jax.random.normal(kk, (b, t, n, h), jnp.bfloat16) for kk in ks)
for causal in (True, False):
  cfg = dataclasses.replace(default_config(64, causal, t), bwd_fused=True, bwd_block_q=64)
  f = lambda q, k, v: jflash.attention(q, k, v, is_causal=causal, implementation="mosaic_gpu", config=cfg, deterministic=False)
  c = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
  r = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  g = jax.jit(lambda *a: jax.vjp(f, *a[:3])[1](a[3]))(q, k, v, do)
  gc = jax.jit(lambda *a: jax.vjp(c, *a[:3])[1](a[3]))(q, k, v, do)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  gr = jax.jit(lambda *a: jax.vjp(r, *a[:3])[1](a[3]))(*f32)
  print("causal", causal, "jflash fused err", [float(jnp.abs(x.astype(jnp.float32) - y).max()) for x, y in zip(g, gr)],
        "cudnn err", [float(jnp.abs(x.astype(jnp.float32) - y).max()) for x, y in zip(gc, gr)], flush=True)
