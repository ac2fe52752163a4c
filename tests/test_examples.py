"""The example trains: the tiny preset's loss falls on CPU, and it resumes from a checkpoint."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_lm():
  spec = importlib.util.spec_from_file_location("train_lm", ROOT / "examples" / "train_lm.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules["train_lm"] = module  # dataclasses resolve annotations through sys.modules
  spec.loader.exec_module(module)
  return module


def test_tiny_preset_loss_falls_and_resumes(train_lm, tmp_path):
  out, ckpt = tmp_path / "out", tmp_path / "ckpt"
  common = ["--preset", "tiny", "--out-dir", str(out), "--ckpt-dir", str(ckpt),
            "--ckpt-every", "40", "--eval-every", "40", "--gen-bytes", "32"]
  assert train_lm.cli(common + ["--steps", "80"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  first_loss = metrics["history"]["loss"][0]
  # A random byte model starts near ln(256) = 5.55 nats/byte; 80 steps learn real structure.
  assert first_loss > 5.0
  assert metrics["final_val_loss"] < 3.2, metrics["history"]["val_loss"]
  assert (out / "loss_curve.png").stat().st_size > 0
  assert len((out / "samples.txt").read_bytes()) == len(b"def fibonacci(n):\n") + 32

  # Resume, now with gradient accumulation over 2 micro-batches.
  assert train_lm.cli(common + ["--steps", "90", "--resume", "--accum", "2"]) == 0
  resumed = json.loads((out / "metrics.json").read_text())
  assert resumed["history"]["step"][0] == 81  # continued, did not start over
  assert resumed["final_val_loss"] < 3.2


def test_clear_errors(train_lm, tmp_path, capsys):
  assert train_lm.cli(["--data", str(tmp_path / "missing.txt")]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  small = tmp_path / "small.txt"
  small.write_text("print('hello')\n" * 10)
  assert train_lm.cli(["--data", str(small)]) == 2
  assert "too small for --seq-len 128" in capsys.readouterr().err
  big = tmp_path / "big.txt"
  big.write_text("print('hello')\n" * 1000)
  assert train_lm.cli(["--data", str(big), "--seq-len", "64", "--max-positions", "32"]) == 2
  assert "exceeds --max-positions 32" in capsys.readouterr().err
