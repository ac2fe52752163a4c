"""The report: ratios to cuDNN, the text and Markdown tables, results.json/.csv/.md, merge.

One run writes ``results.json`` (``meta``, ``rows``, ``memory``, ``block_sweep``),
``results.csv`` (the rows), ``results.md`` (the Markdown table) and the plots, and
prints the text table; ``--merge`` joins the results.json files of several runs.
"""

from __future__ import annotations

import csv
import datetime
import json
import pathlib
import sys

import jax

import jflash
from jflash.bench.cases import Case
from jflash.bench.implementations import legend
from jflash.bench.plots import plot_all

# The fields of a row that name its case, in Case's order (with "impl" first: its row).
CASE_FIELDS = ("head_dim", "seq_len", "causal", "dtype", "batch", "heads", "kv_heads")


def add_ratios(rows: list[dict], baseline: str = "cudnn") -> None:
  """Adds `*_vs_cudnn` = TFLOP/s / cuDNN's TFLOP/s on the same case, in place."""
  key = lambda r: tuple(r[k] for k in CASE_FIELDS)
  base = {key(r): r for r in rows if r["impl"] == baseline and "error" not in r}
  for r in rows:
    b = base.get(key(r))
    for metric in ("fwd_tflops", "bwd_tflops", "fwd_bwd_tflops"):
      if b is not None and metric in r and metric in b:
        r[metric.replace("tflops", f"vs_{baseline}")] = r[metric] / b[metric]


def format_table(rows: list[dict]) -> str:
  """The rows as a text table: TFLOP/s fwd / bwd / fwd+bwd, ratio to cuDNN, memory."""
  head = (f"{'case':44s} {'impl':14s} {'fwd':>7s} {'bwd':>7s} {'f+b':>7s} "
          f"{'fwd/cuDNN':>9s} {'bwd/cuDNN':>9s} {'temp f+b':>10s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    case = Case(*(r[k] for k in CASE_FIELDS)).label()
    if "error" in r:
      lines.append(f"{case:44s} {r['impl']:14s} {r['error']}")
      continue
    fmt = lambda key, spec: format(r[key], spec) if key in r else format("—", ">" + spec[0])
    temp = f"{r['fwd_bwd_temp_bytes'] / 2**20:8.1f}Mi" if "fwd_bwd_temp_bytes" in r else "—"
    lines.append(f"{case:44s} {r['impl']:14s} {fmt('fwd_tflops', '7.1f')} "
                 f"{fmt('bwd_tflops', '7.1f')} {fmt('fwd_bwd_tflops', '7.1f')} "
                 f"{fmt('fwd_vs_cudnn', '9.2f')} {fmt('bwd_vs_cudnn', '9.2f')} {temp:>10s}"
                 + (f"  ({r['bwd_error']})" if "bwd_error" in r else ""))
  return "\n".join(lines)


def markdown_table(rows: list[dict], ours: str = "jflash:triton") -> str:
  """fwd / bwd TFLOP/s per case and implementation, and `ours` over cuDNN and over mha."""
  impls = list(dict.fromkeys(r["impl"] for r in rows))
  cases = list(dict.fromkeys((r["head_dim"], r["seq_len"], r["causal"], r["batch"], r["heads"],
                              r["kv_heads"]) for r in rows))
  by = {(r["impl"], r["head_dim"], r["seq_len"], r["causal"], r["batch"], r["heads"],
         r["kv_heads"]): r for r in rows}

  def cell(r):
    if r is None:
      return "—"
    if "error" in r:
      return r["error"].split(":")[0]
    bwd = f"{r['bwd_tflops']:.0f}" if "bwd_tflops" in r else "—"
    return f"{r['fwd_tflops']:.0f} / {bwd}"

  def ratio(a, b):
    if not a or not b or "fwd_tflops" not in a or "fwd_tflops" not in b:
      return "—"
    text = f"{a['fwd_tflops'] / b['fwd_tflops']:.2f}x"
    if "bwd_tflops" in a and "bwd_tflops" in b:
      text += f", {a['bwd_tflops'] / b['bwd_tflops']:.2f}x"
    return text

  head = ["H", "T", "causal", "B", "N", "K", *map(legend, impls), f"{ours} / cudnn",
          f"{ours} / pallas_mha"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for case in cases:
    h, t, causal, b, n, k = case
    cells = [cell(by.get((impl, *case))) for impl in impls]
    mine = by.get((ours, *case))
    lines.append("| " + " | ".join([str(h), str(t), "yes" if causal else "no", str(b), str(n),
                                    str(k), *cells, ratio(mine, by.get(("cudnn", *case))),
                                    ratio(mine, by.get(("pallas_mha", *case)))]) + " |")
  return "\n".join(lines)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
  fields = sorted({k for r in rows for k in r})
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def cudnn_text(version) -> str:
  """cuDNN's integer version (e.g. 91900) as text (9.19.0)."""
  if not isinstance(version, int):
    return str(version)
  return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


def versions() -> dict:
  """The run's `meta`: device, jax, jflash and cuDNN versions, date and command."""
  info = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
              jflash=jflash.__version__, date=datetime.date.today().isoformat(),
              command=" ".join(["python -m jflash.bench", *sys.argv[1:]]))
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
    info["cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
  except Exception:  # not a CUDA build
    info["cudnn"] = None
  return info


def write_results(out: pathlib.Path, meta, rows, memory_rows, block_rows) -> None:
  (out / "results.json").write_text(json.dumps(
      dict(meta=meta, rows=rows, memory=memory_rows, block_sweep=block_rows), indent=1))


def write_report(out: pathlib.Path, meta, rows, memory_rows, block_rows, dtype) -> None:
  """Writes results.json/.csv/.md and the plots, and prints the table."""
  write_results(out, meta, rows, memory_rows, block_rows)
  write_csv(rows, out / "results.csv")
  dates = meta["date"] if isinstance(meta["date"], list) else [meta["date"]]
  (out / "results.md").write_text(
      f"{meta['device']}, jax {meta['jax']}, cuDNN {cudnn_text(meta['cudnn'])}, "
      f"{', '.join(dates)}: forward / backward TFLOP/s (ratios: forward, backward)\n\n"
      + markdown_table(rows) + "\n")
  plots = plot_all(out, rows, memory_rows, block_rows,
                   f"{meta['device']}, {dtype}, jax {meta['jax']}")
  print(format_table(rows))
  for r in memory_rows:
    text = r.get("error") or (f"fwd {r['fwd_temp_bytes'] / 2**20:9.1f} MiB, fwd+bwd "
                              f"{r['fwd_bwd_temp_bytes'] / 2**20:9.1f} MiB")
    print(f"memory B=1 N={r['heads']} H={r['head_dim']} T={r['seq_len']:6d} causal "
          f"{r['impl']:14s} {text}")
  for r in block_rows:
    time_text = r.get("error") or format(r["fwd_ms"], ".3f") + " ms"
    print(f"block sweep H={r['head_dim']} T={r['seq_len']} block_q={r['block_q']} "
          f"block_kv={r['block_kv']:3d} stages={r.get('num_stages', '?')}: {time_text}")
  print(f"wrote {out}/results.json, results.csv" + "".join(f", {p}" for p in plots))


def merge(paths, out: pathlib.Path) -> int:
  """`--merge`: joins results.json files of several runs (same device) into one report.

  A case measured in several runs keeps its first run's row; the memory and block-size
  sweeps come from the last run that has them.
  """
  runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  devices = {r["meta"]["device"] for r in runs}
  if len(devices) != 1:
    print(f"--merge: the runs come from different devices {sorted(devices)}; not merging",
          file=sys.stderr)
    return 2
  meta = dict(runs[0]["meta"], command=[r["meta"]["command"] for r in runs],
              date=sorted({r["meta"]["date"] for r in runs}))
  rows, seen = [], set()
  for row in (row for r in runs for row in r["rows"]):  # a case measured twice: the first
    key = tuple(row[k] for k in ("impl", *CASE_FIELDS))
    if key not in seen:
      seen.add(key)
      rows.append(row)
  # A sweep is one experiment: the last run that has one supplies it.
  memory_rows = next((r["memory"] for r in reversed(runs) if r["memory"]), [])
  block_rows = next((r["block_sweep"] for r in reversed(runs) if r["block_sweep"]), [])
  out.mkdir(parents=True, exist_ok=True)
  dtypes = sorted({r["dtype"] for r in rows})
  write_report(out, meta, rows, memory_rows, block_rows, "/".join(dtypes))
  return 0
