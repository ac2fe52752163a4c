"""``python -m jflash.bench --variants``: what each attention variant costs or saves.

One row per (variant, implementation): forward and forward+backward GPU time (CUPTI
median, as the main benchmark), at B=1, T=S=16384, N=K=16, H=128, bf16 (the long-row
setting where skipping tiles matters), next to full causal jflash in the same run and to
``jax.nn.dot_product_attention`` (cuDNN and XLA) given the same mask where it can express
it (a dense [B, 1, T, S] mask for packing). Speed-ups are against jflash's full causal.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jflash

T, N, H, DOCS = 16384, 16, 128, 8


def _segment_ids():
  return jnp.asarray(np.repeat(np.arange(DOCS), T // DOCS)[None], jnp.int32)


def _packed_mask():
  ids = _segment_ids()[0]
  pos = jnp.arange(T)
  return ((ids[:, None] == ids[None, :]) & (pos[None, :] <= pos[:, None]))[None, None]


def cases():
  """(name, implementation, fn(q, k, v) -> out) of every row."""
  ids = _segment_ids()
  lengths = jnp.full((1,), T // 2, jnp.int32)
  flash = {
      "causal": dict(is_causal=True),
      "full (not causal)": dict(),
      "causal window 1k": dict(is_causal=True, local_window_size=(1024, 0)),
      "two-sided window (512, 512)": dict(local_window_size=(512, 512)),
      f"packed: {DOCS} documents, causal": dict(is_causal=True, q_segment_ids=ids),
      "causal, keys padded to T/2": dict(is_causal=True, key_value_seq_lengths=lengths,
                                         query_seq_lengths=lengths),
      "causal + soft-cap 50": dict(is_causal=True, logits_soft_cap=50.0),
      "causal + ALiBi": dict(is_causal=True, alibi_slopes=jnp.full((N,), 0.01, jnp.float32)),
  }
  rows = [(name, "jflash:triton",
           lambda q, k, v, kw=kw: jflash.attention(q, k, v, implementation="triton", **kw))
          for name, kw in flash.items()]
  jax_nn = {
      "causal": dict(is_causal=True),
      "causal window 1k": dict(is_causal=True, local_window_size=(1024, 0)),
      f"packed: {DOCS} documents, causal": dict(mask=_packed_mask()),
      "causal, keys padded to T/2": dict(is_causal=True, query_seq_lengths=lengths,
                                         key_value_seq_lengths=lengths),
  }
  for impl in ("cudnn", "xla"):
    rows += [(name, impl, lambda q, k, v, kw=kw, impl=impl: jax.nn.dot_product_attention(
        q, k, v, implementation=impl, **kw)) for name, kw in jax_nn.items()]
  return rows


def run(out: pathlib.Path, timer, iterations: int) -> list[dict]:
  """Times every row; writes variants.json and variants.md to `out`; returns the rows."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, do = (jax.random.normal(key, (1, T, N, H), jnp.bfloat16) for key in keys)
  rows = []
  for name, impl, fn in cases():
    fwd = jax.jit(fn)
    fwd_bwd = jax.jit(lambda q, k, v, do, fn=fn: jax.vjp(fn, q, k, v)[1](do))
    row = dict(variant=name, impl=impl)
    try:
      row["fwd_ms"] = timer(fwd, q, k, v, iterations=iterations)
      row["fwd_bwd_ms"] = timer(fwd_bwd, q, k, v, do, iterations=iterations)
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
    print(row, flush=True)
    rows.append(row)
  base = next(r for r in rows if r["impl"] == "jflash:triton" and r["variant"] == "causal")
  lines = ["| variant | impl | fwd ms | fwd+bwd ms | fwd+bwd speed-up vs jflash causal |",
           "|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['variant']} | {r['impl']} | – | – | {r['error']} |")
    else:
      lines.append(f"| {r['variant']} | {r['impl']} | {r['fwd_ms']:.3f} | "
                   f"{r['fwd_bwd_ms']:.3f} | {base['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x |")
  (out / "variants.json").write_text(json.dumps(rows, indent=1))
  (out / "variants.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return rows
