"""The benchmark CLI's plumbing on CPU: tiny sizes, XLA paths, every output written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ON_GPU
from jflash import bench, tuning


def test_cpu_smoke_writes_rows_tables_and_plots(tmp_path, capsys):
  out = tmp_path / "bench"
  assert bench.main(["--cpu-smoke", "--head-dim", "32", "--seq-len", "64", "128",
                     "--causal", "both", "--memory-seq-len", "1024", "4096",
                     "--out", str(out)]) == 0
  results = json.loads((out / "results.json").read_text())
  rows = results["rows"]
  # 2 T x 2 causal + 1 GQA case, for each XLA path the CPU has.
  assert {r["impl"] for r in rows} == {"jflash:xla", "xla"}
  assert len(rows) == 10
  for r in rows:
    assert "error" not in r, r
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_tflops"] > 0
  assert any(r["kv_heads"] < r["heads"] for r in rows)  # the GQA case
  # The memory sweep: jflash's blockwise XLA path stays below jax.nn's dense one.
  memory = {(r["impl"], r["seq_len"]): r["fwd_bwd_temp_bytes"] for r in results["memory"]}
  assert memory[("jflash:xla", 4096)] < memory[("xla", 4096)] / 4
  assert results["meta"]["command"].startswith("python -m jflash.bench")
  for name in ("results.csv", "tflops_forward.png", "tflops_backward.png", "memory.png"):
    assert (out / name).stat().st_size > 0, name
  table = capsys.readouterr().out
  assert "H=32 T=128 causal B=2 N=2 K=1" in table


@pytest.mark.skipif(ON_GPU, reason="the no-GPU message is only shown without a GPU")
def test_without_gpu_says_so_and_fails(capsys):
  assert bench.main([]) == 2
  assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_unsupported_cases_are_rows_not_crashes():
  case = bench.Case.grid(64, 100, False, tokens=200, width=128, group=2)
  row = bench.measure("pallas_mha", case, timer=bench.wall_time_ms, iterations=1)
  assert row["error"] == "unsupported: mha has no GQA (needs K == N)"


def test_ratios_and_flops():
  case = bench.Case.grid(128, 4096, True)
  assert (case.batch, case.heads, case.kv_heads) == (4, 16, 16)
  assert case.forward_flops() == 4 * 4 * 16 * 4096 * 4096 * 128 / 2
  rows = [dict(impl=i, head_dim=128, seq_len=4096, causal=True, dtype="bfloat16", batch=4,
               heads=16, kv_heads=16, fwd_tflops=t, bwd_tflops=t / 2)
          for i, t in (("cudnn", 500.0), ("jflash:triton", 400.0))]
  bench.add_ratios(rows)
  assert rows[1]["fwd_vs_cudnn"] == pytest.approx(0.8)
  assert rows[1]["bwd_vs_cudnn"] == pytest.approx(0.8)


def test_merge_joins_runs_into_one_report(tmp_path, capsys):
  runs = []
  for h in (16, 32):
    out = tmp_path / f"run{h}"
    assert bench.main(["--cpu-smoke", "--head-dim", str(h), "--seq-len", "64", "--causal",
                       "no", "--no-gqa", "--memory-seq-len", "--out", str(out)]) == 0
    runs.append(str(out / "results.json"))
  merged = tmp_path / "merged"
  # A case in two runs is kept once (the first run's).
  assert bench.main(["--merge", *runs, runs[0], "--out", str(merged)]) == 0
  results = json.loads((merged / "results.json").read_text())
  assert sorted((r["head_dim"], r["impl"]) for r in results["rows"]) == [
      (16, "jflash:xla"), (16, "xla"), (32, "jflash:xla"), (32, "xla")]
  assert len(results["meta"]["command"]) == 3
  assert (merged / "tflops_forward.png").stat().st_size > 0
  assert "H=32 T=64 full" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
  result = subprocess.run([sys.executable, "-m", "jflash.bench", "--help"], capture_output=True,
                          text=True, check=True)
  assert "usage: python -m jflash.bench" in result.stdout
  for flag in ("--cpu-smoke", "--merge", "--tune", "--memory-seq-len", "--compile-workers"):
    assert flag in result.stdout


def test_tune_candidates_are_valid_triton_configs():
  """Every row of tuning's sweep tables (what --tune and --tune fwd time) is a config."""
  for head_dim in (64, 128, 256):
    candidates = tuning.sweep_candidates(head_dim)
    assert len(candidates) == len(tuning.SWEEP[head_dim]["fwd"])
    for fwd, dkv, dq in candidates:
      config = tuning.sweep_config(fwd, dkv, dq)
      assert (config.block_q, config.block_kv, config.num_warps, config.num_stages) == fwd
      assert (config.block_q_dkv, config.block_kv_dkv, config.num_warps_dkv,
              config.num_stages_dkv) == dkv
      assert (config.block_q_dq, config.block_kv_dq, config.num_warps_dq,
              config.num_stages_dq) == dq
    for fwd in tuning.FORWARD_SWEEP[head_dim]:
      assert isinstance(tuning.sweep_config(fwd), tuning.TritonConfig)
  assert tuning.sweep_candidates(40) == tuning.sweep_candidates(64)  # by padded head dim
