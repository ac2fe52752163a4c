"""Gradients of jflash's default Mosaic GPU backward with deterministic=False (at H=64, causal,
T > 8k: the fused kernel with 128-query tiles) against an fp32 XLA reference, beside cuDNN's
errors against the same reference: max abs error per gradient (dq, dk, dv)."""
import jax, jax.numpy as jnp, jflash
from jflash.kernels.mosaic_gpu.config import default_config

for b, t, n, kv, causal in ((1, 16384, 4, 4, True), (1, 9000, 8, 2, True), (1, 16384, 4, 4, False)):
  ks = jax.random.split(jax.random.key(3), 4)
  q, do = (jax.random.normal(kk, (b, t, n, 64), jnp.bfloat16) for kk in ks[:2])
  k, v = (jax.random.normal(kk, (b, t, kv, 64), jnp.bfloat16) for kk in ks[2:])
  cfg = default_config(64, causal, t, deterministic=False)
  f = lambda q, k, v: jflash.attention(q, k, v, is_causal=causal, implementation="mosaic_gpu",
                                       deterministic=False)
  c = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
  r = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  grads = lambda fn, *a: jax.jit(lambda *a: jax.vjp(fn, *a[:3])[1](a[3]))(*a)
  g, gc = grads(f, q, k, v, do), grads(c, q, k, v, do)
  gr = grads(r, *(x.astype(jnp.float32) for x in (q, k, v, do)))
  err = lambda gs: [round(float(jnp.abs(x.astype(jnp.float32) - y).max()), 5) for x, y in zip(gs, gr)]
  print(dict(B=b, T=t, N=n, K=kv, causal=causal, fused=cfg.bwd_fused, bwd_block_q=cfg.bwd_block_q,
             jflash_err=err(g), cudnn_err=err(gc)), flush=True)
