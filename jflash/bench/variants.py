"""``python -m jflash.bench --variants``: what each attention variant costs or saves.

One row per (variant, implementation): forward and forward+backward GPU time (CUPTI
median, as the main benchmark), at B=1, T=S=16384, N=K=16, H=128, bf16 (the long-row
setting where skipping tiles matters), next to full causal jflash in the same run and to
``jax.nn.dot_product_attention`` (cuDNN and XLA) given the same mask where it can express
it (a dense [B, 1, T, S] mask for packing). Speed-ups are against jflash's full causal.

A second table times block-sparse attention (FlashAttention, Sec. 3.3 and Figure 2,
right): a random `jflash.masks.BlockLayout` of 128 x 128 blocks with a fixed number of
nonzero blocks per block row, at densities 1 to 1/16, non-causal; its time should fall
in proportion to the density.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jflash

T, N, H, DOCS = 16384, 16, 128, 8
DENSITIES = (1.0, 0.5, 0.25, 0.125, 0.0625)
BLOCK = 128


def _segment_ids():
  return jnp.asarray(np.repeat(np.arange(DOCS), T // DOCS)[None], jnp.int32)


def _packed_mask():
  ids = _segment_ids()[0]
  pos = jnp.arange(T)
  return ((ids[:, None] == ids[None, :]) & (pos[None, :] <= pos[:, None]))[None, None]


def _layout(density: float) -> jflash.masks.BlockLayout:
  """A random layout with round(density * n) nonzero blocks in every block row."""
  n = T // BLOCK
  rng = np.random.default_rng(0)
  per_row = max(1, round(density * n))
  layout = np.zeros((n, n), bool)
  for r in range(n):
    layout[r, rng.choice(n, per_row, replace=False)] = True
  return jflash.masks.BlockLayout(layout, BLOCK, BLOCK)


def cases():
  """(name, implementation, fn(q, k, v) -> out) of every row."""
  ids = _segment_ids()
  lengths = jnp.full((1,), T // 2, jnp.int32)
  key = jax.random.PRNGKey(1)
  bias = jax.random.normal(key, (1, 1, T, T), jnp.bfloat16)
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
      f"packed: {DOCS} documents, causal, as a dense mask": dict(mask=_packed_mask()),
      "causal + bias [1, 1, T, S] (not differentiated)": dict(is_causal=True, bias=bias),
      "causal + dropout 0.1": dict(is_causal=True, dropout_rate=0.1, dropout_rng=key),
      "causal window 1k as a mask object": dict(
          mask=jflash.masks.Causal() & jflash.masks.LocalWindow(1024, 0)),
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
      "causal + bias [1, 1, T, S] (not differentiated)": dict(is_causal=True, bias=bias),
  }
  for impl in ("cudnn", "xla"):
    rows += [(name, impl, lambda q, k, v, kw=kw, impl=impl: jax.nn.dot_product_attention(
        q, k, v, implementation=impl, **kw)) for name, kw in jax_nn.items()]
  for density in DENSITIES:
    layout = _layout(density)
    rows.append((f"block-sparse, density {density:g}", "jflash:triton",
                 lambda q, k, v, m=layout: jflash.attention(q, k, v, mask=m,
                                                            implementation="triton")))
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
  dense = next((r for r in rows if r["variant"] == "block-sparse, density 1"), None)
  if dense is not None and "error" not in dense:
    lines += ["", "| block-sparse density | fwd ms | fwd / dense | fwd+bwd ms | "
              "fwd+bwd / dense |", "|---|---|---|---|---|"]
    for r in rows:
      if r["variant"].startswith("block-sparse") and "error" not in r:
        lines.append(f"| {r['variant'].split()[-1]} | {r['fwd_ms']:.3f} | "
                     f"{r['fwd_ms'] / dense['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                     f"{r['fwd_bwd_ms'] / dense['fwd_bwd_ms']:.3f} |")
  (out / "variants.json").write_text(json.dumps(rows, indent=1))
  (out / "variants.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return rows
