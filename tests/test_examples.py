"""The example LM: the tiny preset's loss falls on CPU and resumes from a checkpoint; its
embedding gradients are float32, weight decay reaches only the weight matrices, gradient
accumulation equals one larger batch, and data parallelism over 4 host devices (the
conftest's XLA_FLAGS) trains like one device at equal global batch; the GELU keeps only
its input for the backward and --triton-gemm reaches the step's XLA options; --bench times a
median step with the next step in flight; benchmarks/lm/profile_step.py runs on CPU."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jflash

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
  assert train_lm.cli(common + ["--steps", "90", "--resume", "--accum", "2", "--devices", "2"]) == 0
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


def _tiny(train_lm, *extra):
  return train_lm.parse_args(["--preset", "tiny", *extra])


def test_deterministic_backward_flag(train_lm):
  """--no-deterministic-backward reaches every attention layer (default: deterministic)."""
  for extra, want in (((), True), (("--no-deterministic-backward",), False)):
    model = train_lm.GPT(_tiny(train_lm, *extra), nnx.Rngs(0))
    layers = [m for _, m in nnx.iter_graph(model)
              if isinstance(m, jflash.nn.FlashSelfAttention)]
    assert layers and all(m.attention_fn.keywords["deterministic_backward"] is want
                          for m in layers)


def test_triton_gemm_flag_reaches_the_step(train_lm):
  """--triton-gemm: off by default, on with --attention xla, the flag wins; the training
  step compiles with step_compiler_options (a misspelt option fails its compile, so the
  options do reach XLA)."""
  assert _tiny(train_lm).triton_gemm is False
  assert _tiny(train_lm, "--attention", "xla").triton_gemm is True
  assert _tiny(train_lm, "--attention", "xla", "--no-triton-gemm").triton_gemm is False
  assert train_lm.step_compiler_options(_tiny(train_lm, "--triton-gemm")) == {
      "xla_gpu_enable_triton_gemm": True}
  args = _tiny(train_lm, "--layers", "1")
  tokens = np.zeros((1, args.batch_size, args.seq_len), np.int32)
  for options, fails in (({"xla_gpu_enable_triton_gemmm": False}, True),
                         (train_lm.step_compiler_options(args), False)):
    model = train_lm.GPT(args, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, train_lm.make_tx(args, 1e-3), wrt=nnx.Param)
    trainer = train_lm.Trainer(model, optimizer, train_lm.make_mesh(args), options)
    if fails:
      with pytest.raises(Exception, match="xla_gpu_enable_triton_gemmm"):
        trainer.step(tokens, tokens)
    else:
      assert np.isfinite(float(trainer.step(tokens, tokens)))


def test_embedding_gradients_are_float32(train_lm):
  """The token and position tables' gradients against a float64 scatter-add.

  The check fails with nnx.Embed(dtype=bfloat16) (the example before issue 11): its
  bf16 scatter-add lost most of a frequent byte's gradient row.
  """
  model = train_lm.GPT(_tiny(train_lm), nnx.Rngs(0))
  rng = np.random.default_rng(0)
  # 70% of the tokens are one byte: its gradient row sums ~1400 contributions.
  tokens = np.where(rng.random((16, 128)) < 0.7, 32, rng.integers(0, 256, (16, 128)))
  cotangent = rng.standard_normal((16, 128, 128)).astype(np.float32)

  def objective(model):
    x = model.embed_tokens(jnp.asarray(tokens, jnp.int32))
    assert x.dtype == jnp.bfloat16
    return jnp.sum(x.astype(jnp.float32) * cotangent)

  grads = nnx.grad(objective)(model)
  # The cast to bf16 rounds the cotangent on its way back; the sums must be exact(ish).
  ct = cotangent.astype(jnp.bfloat16).astype(np.float64)
  want_tok = np.zeros((256, 128))
  np.add.at(want_tok, tokens.ravel(), ct.reshape(-1, 128))
  want_pos = ct.sum(axis=0)
  got_tok = np.asarray(grads.embed.embedding[...], np.float64)
  got_pos = np.asarray(grads.pos.embedding[...], np.float64)
  assert got_tok.dtype == got_pos.dtype
  rel = lambda got, want: np.abs(got - want).max() / np.abs(want).max()
  assert rel(got_tok[32], want_tok[32]) < 1e-5, rel(got_tok[32], want_tok[32])
  assert rel(got_tok, want_tok) < 1e-5
  assert rel(got_pos, want_pos) < 1e-5


def test_gelu_keeps_only_its_input(train_lm):
  """The example's GELU: values bitwise those of jax.nn.gelu (tanh approximation);
  gradients those of differentiating jax.nn.gelu in float32 (float32 input: to 1e-6;
  bf16 input: to bf16's rounding of the result); one residual, its input."""
  x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
  want_grad = jax.grad(lambda x: jax.nn.gelu(x, approximate=True).sum())
  for dtype in (jnp.float32, jnp.bfloat16):
    xd = x.astype(dtype)
    np.testing.assert_array_equal(np.asarray(train_lm.gelu(xd), np.float32),
                                  np.asarray(jax.nn.gelu(xd, approximate=True), np.float32))
    out, vjp = jax.vjp(train_lm.gelu, xd)
    dy = jnp.cos(x).astype(dtype)  # a cotangent that is not all ones
    (got,) = vjp(dy)
    assert got.dtype == dtype
    want = want_grad(xd.astype(jnp.float32)) * dy.astype(jnp.float32)
    tol = 1e-6 if dtype == jnp.float32 else 2.0 ** -8
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)
    residuals = [r for r in jax.tree.leaves(vjp) if getattr(r, "shape", ()) == x.shape]
    assert len(residuals) == 1 and residuals[0].dtype == dtype, residuals
  # The check above can fail: jax.nn.gelu itself keeps more than its input.
  _, vjp = jax.vjp(lambda x: jax.nn.gelu(x, approximate=True), x.astype(jnp.bfloat16))
  assert len([r for r in jax.tree.leaves(vjp) if getattr(r, "shape", ()) == x.shape]) > 1


def test_weight_decay_only_on_weight_matrices(train_lm):
  """With zero gradients AdamW's update is decay alone: kernels shrink by lr·wd, and
  embeddings, LayerNorm scales and biases do not move."""
  args = _tiny(train_lm, "--weight-decay", "0.5")
  model = train_lm.GPT(args, nnx.Rngs(0))
  before = jax.tree.map(np.array, nnx.state(model, nnx.Param))  # copies
  optimizer = nnx.Optimizer(model, train_lm.make_tx(args, 0.1), wrt=nnx.Param)
  optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
  after = nnx.state(model, nnx.Param)
  kinds = {}
  for (path, old), (_, new) in zip(jax.tree_util.tree_leaves_with_path(before),
                                   jax.tree_util.tree_leaves_with_path(after)):
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    kinds.setdefault(name, []).append(float(np.abs(np.asarray(new) - np.asarray(old) * (
        1 - 0.1 * 0.5 if name == "kernel" else 1.0)).max()))
  assert set(kinds) == {"kernel", "embedding", "scale", "bias"}, set(kinds)
  assert max(max(v) for v in kinds.values()) < 1e-6, kinds


def test_accumulation_averages_micro_batch_gradients(train_lm):
  """A step over `accum` micro-batches applies the mean of their gradients, each taken
  on its own by nnx.grad (SGD with rate 1: each weight moves by minus that mean), and
  reports the mean loss."""
  args = _tiny(train_lm)
  rng = np.random.default_rng(1)
  tokens, targets = (rng.integers(0, 256, (16, 128)).astype(np.int32) for _ in range(2))
  grad_fn = nnx.jit(nnx.value_and_grad(train_lm.loss_fn))
  for accum in (1, 2, 4):
    shape = (accum, 16 // accum, 128)
    tok, tgt = tokens.reshape(shape), targets.reshape(shape)
    model = train_lm.GPT(args, nnx.Rngs(0))
    pieces = [grad_fn(model, tok[i], tgt[i]) for i in range(accum)]
    want_loss = np.mean([float(loss) for loss, _ in pieces])
    want = jax.tree.map(lambda *g: -np.mean(np.stack(g), axis=0), *[g for _, g in pieces])
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    loss = nnx.jit(train_lm.update)(model, optimizer, tok, tgt)
    got = jax.tree.map(lambda a, b: np.asarray(a) - b, nnx.state(model, nnx.Param), before)
    assert abs(float(loss) - want_loss) < 1e-5 * want_loss
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert np.abs(g - w).max() <= 1e-3 * np.abs(w).max(), (accum, np.abs(g - w).max())


def test_data_parallel_trains_like_one_device(train_lm, tmp_path):
  """4 host devices (batch sharded, gradients all-reduced) vs 1, equal global batch."""
  assert len(jax.devices()) == 4  # the conftest's XLA_FLAGS
  losses = {}
  for devices in (1, 4):
    out = tmp_path / f"d{devices}"
    assert train_lm.cli(["--preset", "tiny", "--steps", "12", "--eval-every", "12",
                         "--gen-bytes", "4", "--devices", str(devices),
                         "--out-dir", str(out)]) == 0
    losses[devices] = json.loads((out / "metrics.json").read_text())["history"]["loss"]
  one, four = np.array(losses[1]), np.array(losses[4])
  assert one.shape == four.shape == (12,)
  assert one[-1] < one[0] - 0.3  # it trains
  np.testing.assert_allclose(four, one, rtol=2e-3)


def test_devices_errors(train_lm, capsys):
  assert train_lm.cli(["--preset", "tiny", "--devices", "8"]) == 2
  assert "--devices 8: only 4 device(s) visible" in capsys.readouterr().err
  assert train_lm.cli(["--preset", "tiny", "--devices", "3"]) == 2
  assert "--batch-size 16 must be divisible by the 3" in capsys.readouterr().err


def test_step_seconds_times_each_step_with_the_next_in_flight(train_lm):
  """step_seconds dispatches step i + 1 before waiting for step i (as training does) and
  returns one interval per step; with each wait taking ~20 ms and dispatch nothing,
  the intervals are ~20 ms."""
  import time  # pylint: disable=g-import-not-at-top
  events = []

  class Pending:
    def __init__(self, i):
      self.i = i

    def __float__(self):
      events.append(("wait", self.i))
      time.sleep(0.02)
      return 0.0

  def run(i):
    events.append(("dispatch", i))
    return Pending(i)

  intervals = train_lm.step_seconds(run, 6)
  assert events[:5] == [("dispatch", 0), ("dispatch", 1), ("wait", 0), ("dispatch", 2),
                        ("wait", 1)]
  assert [i for kind, i in events if kind == "dispatch"] == list(range(8))
  assert intervals.shape == (6,)
  assert 0.015 < float(np.median(intervals)) < 0.035


def test_bench_and_profile_step_run_on_cpu(train_lm, capsys, tmp_path):
  """--bench prints the median step and its tokens/s; benchmarks/lm/profile_step.py
  times the example's and the plain step and summarises a jax.profiler trace."""
  assert train_lm.cli(["--preset", "tiny", "--bench", "3", "--devices", "1"]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("BENCH "))
  result = json.loads(line[len("BENCH "):])
  assert result["devices"] == 1 and result["step_ms"] > 0
  assert result["tokens_per_s"] == pytest.approx(16 * 128 / result["step_ms"] * 1e3)

  spec = importlib.util.spec_from_file_location(
      "profile_step", ROOT / "benchmarks" / "lm" / "profile_step.py")
  profile_step = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(profile_step)
  assert profile_step.main(["--cases", "plain:xla", "example:xla", "--seq-len", "64",
                            "--batch-size", "4", "--random-tokens", "--trace",
                            str(tmp_path), "--", "--preset", "tiny", "--devices", "1"]) == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  steps = [l for l in lines if "step_ms" in l]
  traces = [l for l in lines if "processes" in l]
  assert [l["case"] for l in steps] == [l["case"] for l in traces] == ["plain:xla", "example:xla"]
  assert all(l["step_ms"] > 0 for l in steps)
  assert all(p["busy_ms"] > 0 for l in traces for p in l["processes"].values())


def test_mfu_counts_every_device(train_lm, monkeypatch):
  """MFU's peak is per device times the devices the tokens/s are counted over."""
  monkeypatch.setattr(train_lm, "PEAK_BF16_FLOPS", {jax.devices()[0].device_kind: 10.0})
  assert train_lm.peak_flops() == 10.0
  assert train_lm.peak_flops(2) == 20.0
  monkeypatch.setattr(train_lm, "PEAK_BF16_FLOPS", {})
  assert train_lm.peak_flops(2) is None
