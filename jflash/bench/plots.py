"""The report's figures (matplotlib, where installed): TFLOP/s, runtime and memory, blocks.

``tflops_forward.png`` and ``tflops_backward.png`` (TFLOP/s vs T per head dim and mask),
``memory.png`` (runtime and memory vs T, as in FlashAttention's Figure 3) and
``block_sweep.png`` (forward time vs block_kv).
"""

from __future__ import annotations

import pathlib

from jflash.bench.implementations import IMPLEMENTATIONS, legend


def plot_all(out: pathlib.Path, rows, memory_rows, block_rows, title: str) -> list[str]:
  """TFLOP/s vs T per head dim (forward, backward), memory vs T, runtime vs block_kv.

  Returns the names of the files written to `out`.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed: no plots (pip install 'jflash[bench]')")
    return []
  grid = [r for r in rows if r["kv_heads"] == r["heads"] and "error" not in r]
  written = _plot_tflops(plt, out, grid, title)
  if memory_rows:
    written.append(_plot_memory(plt, out, grid, memory_rows, title))
  ok = [r for r in block_rows if "fwd_ms" in r]
  if ok:
    written.append(_plot_block_sweep(plt, out, ok))
  return written


def _save(plt, fig, path: pathlib.Path) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path.name


def _plot_tflops(plt, out: pathlib.Path, grid, title: str) -> list[str]:
  """tflops_forward.png, tflops_backward.png: one panel per head dim and mask."""
  written = []
  head_dims = sorted({r["head_dim"] for r in grid})
  for metric, name in (("fwd_tflops", "forward"), ("bwd_tflops", "backward")):
    if not head_dims:
      break
    causals = sorted({r["causal"] for r in grid})
    fig, axes = plt.subplots(len(causals), len(head_dims),
                             figsize=(4.5 * len(head_dims), 3.5 * len(causals)), squeeze=False)
    for col, h in enumerate(head_dims):
      for row_i, causal in enumerate(causals):
        ax = axes[row_i][col]
        for impl in dict.fromkeys(r["impl"] for r in grid):
          pts = sorted((r["seq_len"], r[metric]) for r in grid if r["impl"] == impl
                       and r["head_dim"] == h and r["causal"] == causal and metric in r)
          if pts:
            ax.plot(*zip(*pts), "o-", label=legend(impl))
        ax.set_xscale("log", base=2)
        ax.set(title=f"H={h}, {'causal' if causal else 'not causal'}", xlabel="sequence length",
               ylabel=f"{name} TFLOP/s")
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: {title}")
    written.append(_save(plt, fig, out / f"tflops_{name}.png"))
  return written


def _plot_memory(plt, out: pathlib.Path, grid, memory_rows, title: str) -> str:
  """memory.png, as in FlashAttention (Dao et al. 2022), Figure 3.

  Left, forward+backward runtime vs T (here from the grid, at one head dim, not causal);
  right, memory vs T (B=1).
  """
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  colors = {impl: f"C{i}" for i, impl in enumerate(IMPLEMENTATIONS)}
  head_dims = sorted({r["head_dim"] for r in grid})
  h = 128 if 128 in head_dims else (head_dims[0] if head_dims else None)
  for impl in dict.fromkeys(r["impl"] for r in grid):
    pts = sorted((r["seq_len"], r["fwd_bwd_ms"]) for r in grid if r["impl"] == impl
                 and r["head_dim"] == h and not r["causal"] and "fwd_bwd_ms" in r)
    if pts:
      left.plot(*zip(*pts), "o-", label=legend(impl), color=colors.get(impl))
  left.set(xlabel="sequence length (B·T = 16k tokens)", ylabel="forward+backward time (ms)",
           title=f"runtime, H={h}, not causal", xscale="log", yscale="log")
  for impl in dict.fromkeys(r["impl"] for r in memory_rows):
    pts = sorted((r["seq_len"], r["fwd_bwd_temp_bytes"] / 2**20) for r in memory_rows
                 if r["impl"] == impl and "fwd_bwd_temp_bytes" in r)
    if pts:
      right.plot(*zip(*pts), "o-", label=legend(impl), color=colors.get(impl))
  r0 = memory_rows[0]
  right.set(xlabel="sequence length (B=1)", ylabel="peak temporary memory, fwd+bwd (MiB)",
            title=f"memory, H={r0['head_dim']} N={r0['heads']}, causal", xscale="log",
            yscale="log")
  for ax in (left, right):
    ax.set_xscale("log", base=2)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.suptitle(title)
  return _save(plt, fig, out / "memory.png")


def _plot_block_sweep(plt, out: pathlib.Path, ok) -> str:
  """block_sweep.png: forward time vs block_kv, each point labelled with its stages."""
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["block_kv"] for r in ok], [r["fwd_ms"] for r in ok], "o-")
  for r in ok:
    stages = r.get("num_stages", "?")
    ax.annotate(f"{stages} stage{'' if stages == 1 else 's'}", (r["block_kv"], r["fwd_ms"]),
                textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
  ax.set_xscale("log", base=2)
  r0 = ok[0]
  ax.set(xlabel="block_kv", ylabel="forward time (ms)",
         title=f"jflash triton, H={r0['head_dim']} T={r0['seq_len']}, block_q={r0['block_q']}")
  return _save(plt, fig, out / "block_sweep.png")
