"""Train a small byte-level GPT on real text with jflash.nn.FlashSelfAttention.

A decoder-only transformer (GPT-2 style: pre-norm, GELU or SwiGLU MLP, learned or rotary
positions, tied embeddings) over bytes (vocab 256, nothing to download), trained with
optax AdamW (linear warm-up + cosine decay; weight decay on the weight matrices only),
bf16 compute on fp32 master weights (embeddings gathered in fp32), gradient accumulation
in a ``lax.scan``, and data parallelism over every visible device (``--devices N``: the
first N) with JAX's sharding. The default corpus is the Python standard library's own
source files; ``--data PATH`` takes any text file or directory.

``--attention {jflash,xla,cudnn}`` swaps only the attention (jflash's kernels, or
``jax.nn.dot_product_attention`` with that implementation); everything else is identical,
except that the step's matrix multiplies run on cuBLAS unless ``--triton-gemm`` (the
default with ``--attention xla``, whose step at T=8192, B=2 ran out of an H200's memory
without XLA's Triton fusions) lets XLA fuse them into Triton GEMM kernels.

Examples::

  python examples/train_lm.py --preset tiny                      # CPU, about a minute
  python examples/train_lm.py --preset gpt2-small --seq-len 8192 --batch-size 2
  python examples/train_lm.py --preset gpt2-small --attention cudnn --bench 10

Writes ``loss_curve.png``, ``metrics.json`` and ``samples.txt`` to ``--out-dir``, and
orbax checkpoints to ``--ckpt-dir`` (``--resume`` continues from the latest).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jflash
import jflash.nn

PRESETS = {
    # ~0.4M parameters: the CI smoke test (the loss must fall) on a 2-core CPU.
    "tiny": dict(layers=2, d_model=128, heads=4, seq_len=128, batch_size=16, steps=150,
                 lr=3e-3, warmup=15, eval_every=50, eval_batches=4),
    # GPT-2 small shape: 12 layers, d=768, 12 heads of 64 (85M non-embedding parameters).
    "gpt2-small": dict(layers=12, d_model=768, heads=12, seq_len=2048, batch_size=8, steps=2000,
                       lr=6e-4, warmup=100, eval_every=250, eval_batches=8),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
LOG_EVERY = 10  # steps between progress updates (each one waits for the GPU)


@dataclasses.dataclass(frozen=True)
class Args:
  preset: str
  data: str | None
  attention: str
  deterministic_backward: bool
  layers: int
  d_model: int
  heads: int
  kv_heads: int | None
  mlp: str
  positions: str
  max_positions: int | None
  seq_len: int
  batch_size: int
  accum: int
  steps: int
  lr: float
  warmup: int
  weight_decay: float
  eval_every: int
  eval_batches: int
  seed: int
  out_dir: str
  ckpt_dir: str | None
  ckpt_every: int
  resume: bool
  prompt: str
  gen_bytes: int
  bench: int
  devices: int | None
  triton_gemm: bool


def parse_args(argv=None) -> Args:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--data", help="text file or directory (default: Python's stdlib sources)")
  parser.add_argument("--attention", choices=["jflash", "xla", "cudnn"], default="jflash")
  parser.add_argument("--deterministic-backward", action=argparse.BooleanOptionalAction,
                      default=True,
                      help="jflash: gradients bitwise identical run to run (default); "
                      "--no-deterministic-backward lets its backward sum dQ in any order "
                      "where that is faster, as cuDNN's default backward does")
  parser.add_argument("--layers", type=int)
  parser.add_argument("--d-model", type=int)
  parser.add_argument("--heads", type=int)
  parser.add_argument("--kv-heads", type=int, help="key/value heads (GQA); default = heads")
  parser.add_argument("--mlp", choices=["gelu", "swiglu"], default="gelu")
  parser.add_argument("--positions", choices=["learned", "rope"], default="learned")
  parser.add_argument("--max-positions", type=int,
                      help="learned position table size (default: --seq-len)")
  parser.add_argument("--seq-len", type=int)
  parser.add_argument("--batch-size", type=int, help="sequences per micro-batch")
  parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
  parser.add_argument("--steps", type=int)
  parser.add_argument("--lr", type=float)
  parser.add_argument("--warmup", type=int)
  parser.add_argument("--weight-decay", type=float, default=0.1)
  parser.add_argument("--eval-every", type=int)
  parser.add_argument("--eval-batches", type=int)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out-dir", default="train_lm_out")
  parser.add_argument("--ckpt-dir", help="orbax checkpoint directory (default: none)")
  parser.add_argument("--ckpt-every", type=int, default=500)
  parser.add_argument("--resume", action="store_true", help="continue from --ckpt-dir")
  parser.add_argument("--prompt", default="def fibonacci(n):\n")
  parser.add_argument("--gen-bytes", type=int, default=300)
  parser.add_argument("--bench", type=int, default=0,
                      help="only time this many steps after 3 warm-up steps (their median, "
                      "with the next step in flight), print JSON, exit")
  parser.add_argument("--devices", type=int,
                      help="data-parallel over the first N devices (default: every visible one)")
  parser.add_argument("--triton-gemm", action=argparse.BooleanOptionalAction,
                      help="let XLA turn the step's matrix multiplies into Triton GEMM "
                      "fusions, as it does by default. Default: off (cuBLAS for every "
                      "product, ~0.9%% faster gpt2-small step on an H200) except with "
                      "--attention xla, whose step at T=8192, B=2 ran out of an H200's "
                      "memory without the fusions")
  ns = vars(parser.parse_args(argv))
  if ns["triton_gemm"] is None:
    ns["triton_gemm"] = ns["attention"] == "xla"
  preset = PRESETS[ns["preset"]]
  for name, value in preset.items():
    if ns.get(name) is None:
      ns[name] = value
  args = Args(**ns)
  for name in ("layers", "d_model", "heads", "seq_len", "batch_size", "accum", "steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
  if args.d_model % args.heads:
    parser.error(f"--d-model={args.d_model} must be divisible by --heads={args.heads}")
  if args.resume and not args.ckpt_dir:
    parser.error("--resume needs --ckpt-dir")
  if args.devices is not None and args.devices < 1:
    parser.error(f"--devices={args.devices} must be >= 1")
  return args


# ----------------------------------------------------------------------------- data


def load_corpus(path: str | None) -> tuple[np.ndarray, str]:
  """All bytes of the corpus, as uint8, and a description of where they came from."""
  if path is None:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    where = f"{len(files)} .py files of the Python standard library at {root}"
  else:
    p = pathlib.Path(path)
    if not p.exists():
      raise FileNotFoundError(f"--data {path}: no such file or directory")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    where = f"{len(files)} file(s) under {p}"
  data = b"".join(f.read_bytes() for f in files)
  return np.frombuffer(data, np.uint8), where


def split(data: np.ndarray, seq_len: int, val_fraction: float = 0.05):
  """Train/validation split (the last `val_fraction` of the bytes is validation)."""
  cut = int(len(data) * (1 - val_fraction))
  train, val = data[:cut], data[cut:]
  need = seq_len + 1
  if len(val) < need:
    raise ValueError(
        f"corpus of {len(data)} bytes is too small for --seq-len {seq_len}: its validation "
        f"split ({val_fraction:.0%}, {len(val)} bytes) needs at least {need} bytes, so the "
        f"corpus needs at least {math.ceil(need / val_fraction)}")
  return train, val


def batches(data: np.ndarray, seq_len: int, shape: tuple[int, ...], seed: int):
  """Endless shuffled windows: (inputs, targets) of shape `shape + (seq_len,)`."""
  rng = np.random.default_rng(seed)
  offsets = np.arange(seq_len + 1)
  while True:
    starts = rng.integers(0, len(data) - seq_len - 1, size=shape)
    window = data[starts[..., None] + offsets]
    yield window[..., :-1].astype(np.int32), window[..., 1:].astype(np.int32)


# ---------------------------------------------------------------------------- model


def jax_nn_attention(query, key, value, *, is_causal, implementation):
  """jax.nn.dot_product_attention with FlashSelfAttention's attention_fn signature."""
  return jax.nn.dot_product_attention(query, key, value, is_causal=is_causal,
                                      implementation=implementation)


@jax.custom_vjp
def gelu(x):
  """GPT-2's GELU, the tanh approximation: ``jax.nn.gelu(x, approximate=True)``, same
  shape and dtype as x. Its backward keeps only x and recomputes the tanh (in float32):
  differentiated as written, jax.nn.gelu also keeps the tanh for the backward, one more
  tensor of the MLP's hidden size per layer written and read again (on an H200 the
  gpt2-small step at T=2048, B=8 then peaks at 7.39 GB instead of 6.18 GB and ran
  ~0.7% slower: BUILD_NOTES.md, issue 11 session 7)."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_forward(x):
  return jax.nn.gelu(x, approximate=True), x


def _gelu_backward(x, dy):
  # d/dx [x/2 (1 + tanh(u))] with u = c (x + a x^3): (1 + t)/2 + x/2 (1 - t^2) c (1 + 3a x^2)
  c, a = math.sqrt(2 / math.pi), 0.044715
  xf = x.astype(jnp.float32)
  t = jnp.tanh(c * (xf + a * xf ** 3))
  slope = 0.5 * (1 + t) + 0.5 * xf * (1 - t * t) * c * (1 + 3 * a * xf * xf)
  return ((dy.astype(jnp.float32) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)


class MLP(nnx.Module):
  def __init__(self, d: int, kind: str, rngs: nnx.Rngs):
    dense = functools.partial(nnx.Linear, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=rngs)
    self.kind = kind
    if kind == "swiglu":
      hidden = 256 * math.ceil(8 * d / 3 / 256)
      self.gate, self.up, self.down = dense(d, hidden), dense(d, hidden), dense(hidden, d)
    else:
      self.up, self.down = dense(d, 4 * d), dense(4 * d, d)

  def __call__(self, x):
    if self.kind == "swiglu":
      return self.down(nnx.silu(self.gate(x)) * self.up(x))
    return self.down(gelu(self.up(x)))


class Block(nnx.Module):
  def __init__(self, args: Args, rngs: nnx.Rngs):
    norm = functools.partial(nnx.LayerNorm, args.d_model, dtype=jnp.bfloat16,
                             param_dtype=jnp.float32, rngs=rngs)
    attention_fn = None  # jflash's kernels
    if args.attention != "jflash":
      attention_fn = functools.partial(jax_nn_attention, implementation=args.attention)
    self.ln1, self.ln2 = norm(), norm()
    self.attn = jflash.nn.FlashSelfAttention(
        args.heads, args.d_model, num_kv_heads=args.kv_heads, dtype=jnp.bfloat16,
        param_dtype=jnp.float32, use_bias=False, attention_fn=attention_fn,
        deterministic_backward=args.deterministic_backward,
        rope_theta=10000.0 if args.positions == "rope" else None, rngs=rngs)
    self.mlp = MLP(args.d_model, args.mlp, rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x), is_causal=True)
    return x + self.mlp(self.ln2(x))


class GPT(nnx.Module):
  """Byte-level decoder-only transformer; logits [B, T, 256] in float32."""

  def __init__(self, args: Args, rngs: nnx.Rngs):
    # The tables are gathered in float32 and cast after: with dtype=bfloat16, nnx.Embed
    # casts the table first, so the gradient is a bf16 scatter-add that loses most of a
    # frequent byte's gradient row (issue 11).
    embed = functools.partial(nnx.Embed, features=args.d_model, dtype=jnp.float32,
                              param_dtype=jnp.float32, rngs=rngs)
    self.embed = embed(256)
    self.max_positions = args.max_positions or args.seq_len
    self.pos = embed(self.max_positions) if args.positions == "learned" else None
    self.blocks = nnx.List([Block(args, rngs) for _ in range(args.layers)])
    self.ln_f = nnx.LayerNorm(args.d_model, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                              rngs=rngs)

  def __call__(self, tokens):
    t = tokens.shape[-1]
    if self.pos is not None and t > self.max_positions:
      raise ValueError(f"sequence length {t} exceeds the model's {self.max_positions} learned "
                       "positions; use --max-positions or --positions rope")
    x = self.embed_tokens(tokens)
    for block in self.blocks:
      x = block(x)
    table = self.embed.embedding[...].astype(jnp.bfloat16)  # tied output projection
    return jnp.einsum("...d,vd->...v", self.ln_f(x), table).astype(jnp.float32)

  def embed_tokens(self, tokens):
    """Token (+ learned position) embeddings of `tokens` [..., T], gathered in float32
    (so their gradients are float32 scatter-adds), as bfloat16 [..., T, d_model]."""
    x = self.embed(tokens)
    if self.pos is not None:
      x = x + self.pos(jnp.arange(tokens.shape[-1]))
    return x.astype(jnp.bfloat16)


def count_params(model: nnx.Module, non_embedding: bool = False) -> int:
  state = nnx.state(model, nnx.Param)
  total = sum(x.size for x in jax.tree.leaves(state))
  if non_embedding:
    total -= model.embed.embedding.size + (model.pos.embedding.size if model.pos else 0)
  return total


# ------------------------------------------------------------------------- training


def decay_mask(params):
  """True for the weight matrices (the `kernel` of every Linear and attention
  projection), False for embeddings, LayerNorm scales and biases: GPT-2's weight decay."""
  def is_kernel(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_tx(args: Args, schedule) -> optax.GradientTransformation:
  """Global-norm clipping at 1, then AdamW (decay on the weight matrices only)."""
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=args.weight_decay, mask=decay_mask))


def loss_fn(model, tokens, targets):
  logits = model(tokens)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def update(model, optimizer, tokens, targets):
  """One optimizer step over `accum` micro-batches: tokens, targets [accum, B, T].

  The micro-batches run in a `lax.scan` (one traced body whatever `accum` is); their
  gradients are averaged in float32 before the update.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def micro(grad_sum, batch):
    loss_of = lambda p: loss_fn(nnx.merge(graphdef, p, rest), *batch)
    loss, grads = jax.value_and_grad(loss_of)(params)
    return jax.tree.map(jnp.add, grad_sum, grads), loss

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, losses = jax.lax.scan(micro, zeros, (tokens, targets))
  scale = 1.0 / tokens.shape[0]
  optimizer.update(model, jax.tree.map(lambda g: g * scale, grads))
  return losses.mean()


def make_mesh(args: Args) -> jax.sharding.Mesh:
  """A 1-D mesh ("data") over the first `args.devices` devices (default: all)."""
  available = jax.devices()
  n = args.devices or len(available)
  if n > len(available):
    raise ValueError(f"--devices {n}: only {len(available)} device(s) visible "
                     f"({available[0].platform})")
  if args.batch_size % n:
    raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {n} "
                     "data-parallel devices (--devices)")
  return jax.make_mesh((n,), ("data",), devices=available[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def step_compiler_options(args: Args) -> dict:
  """XLA options of the training step: without --triton-gemm, cuBLAS for every matrix
  multiply (XLA's default is a Triton GEMM fusion wherever its autotuner picks one).
  Only GPUs read the option."""
  return {"xla_gpu_enable_triton_gemm": args.triton_gemm}


class Trainer:
  """The model and optimizer as one pytree of arrays, stepped by plain `jax.jit`.

  Data parallel over `mesh`: the state is replicated, each batch is split over the
  "data" axis, and XLA sums the gradients across devices (all-reduce over NCCL on GPUs).
  jflash's attention runs per batch shard (its partitioning rule, `jflash.partitioning`).
  Splitting the NNX graph once (instead of `nnx.jit` walking it on every call) keeps
  Python overhead off the step, so the GPU runs steps back to back. `compiler_options`
  (XLA's, e.g. :func:`step_compiler_options`) compile the training step.
  """

  def __init__(self, model, optimizer, mesh: jax.sharding.Mesh, compiler_options=None):
    self.graphdef, state = nnx.split((model, optimizer))
    P = jax.sharding.PartitionSpec
    self.replicated = jax.sharding.NamedSharding(mesh, P())
    self.state = jax.device_put(state, self.replicated)
    self._micro_batches = jax.sharding.NamedSharding(mesh, P(None, "data"))  # [accum, B, T]
    self._batch = jax.sharding.NamedSharding(mesh, P("data"))  # [B, T]

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=compiler_options)
    def step(state, tokens, targets):
      model, optimizer = nnx.merge(self.graphdef, state)
      loss = update(model, optimizer, tokens, targets)
      return nnx.state((model, optimizer)), loss

    @jax.jit
    def evaluate(state, tokens, targets):
      return loss_fn(nnx.merge(self.graphdef, state)[0], tokens, targets)

    self._step, self._evaluate = step, evaluate

  def step(self, tokens, targets):
    """Runs one step on [accum, B, T] tokens and targets; returns the loss as a device
    scalar (does not wait for it)."""
    put = lambda x: jax.device_put(x, self._micro_batches)
    self.state, loss = self._step(self.state, put(tokens), put(targets))
    return loss

  def eval_loss(self, tokens, targets) -> float:
    put = lambda x: jax.device_put(x, self._batch)
    return float(self._evaluate(self.state, put(tokens), put(targets)))

  def model(self):
    return nnx.merge(self.graphdef, self.state)[0]


@functools.partial(nnx.jit, static_argnames="temperature")
def next_byte(model, window, position, key, temperature=0.8):
  logits = model(window[None])[0, position]
  return jax.random.categorical(key, logits / temperature)


def generate(model, prompt: bytes, n: int, window: int, seed: int) -> bytes:
  """Samples `n` bytes after `prompt`, re-reading a fixed window of the last bytes."""
  out = list(prompt) or [10]
  key = jax.random.PRNGKey(seed)
  for _ in range(n):
    ctx = out[-window:]
    buf = np.zeros(window, np.int32)
    buf[:len(ctx)] = ctx
    key, sub = jax.random.split(key)
    out.append(int(next_byte(model, jnp.asarray(buf), len(ctx) - 1, sub)))
  return bytes(out[len(prompt):])


def flops_per_token(args: Args, n_params: int) -> float:
  """6N for the weights plus causal attention, 6·L·d·T (half of 12·L·d·T)."""
  return 6.0 * n_params + 6.0 * args.layers * args.d_model * args.seq_len


def peak_flops(devices: int = 1) -> float | None:
  """Dense bf16 peak FLOP/s of `devices` devices of the first device's kind (MFU's
  denominator: tokens/s are counted over all of them), None for an unknown kind."""
  kind = jax.devices()[0].device_kind
  peak = next((f for name, f in PEAK_BF16_FLOPS.items() if name in kind), None)
  return peak and devices * peak


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def main(argv=None) -> int:
  args = parse_args(argv)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  data, where = load_corpus(args.data)
  train_data, val_data = split(data, args.seq_len)
  if args.positions == "learned" and args.seq_len > (args.max_positions or args.seq_len):
    raise ValueError(f"--seq-len {args.seq_len} exceeds --max-positions {args.max_positions}")
  mesh = make_mesh(args)
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup,
                                                max(args.steps, args.warmup + 1), args.lr / 10)

  def build():
    model = GPT(args, nnx.Rngs(args.seed))
    return model, nnx.Optimizer(model, make_tx(args, schedule), wrt=nnx.Param)

  manager, start = None, 0
  if args.ckpt_dir:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    manager = ocp.CheckpointManager(pathlib.Path(args.ckpt_dir).absolute(),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if args.resume and manager.latest_step() is not None:
      start = manager.latest_step()
  if start:
    # Restore into abstract state (orbax's NNX recipe): the model is never initialised.
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    restored = manager.restore(start, args=ocp.args.StandardRestore(
        {"model": abstract[0], "optimizer": abstract[1]}))
    abstract[0], abstract[1] = restored["model"], restored["optimizer"]
    model, optimizer = nnx.merge(graphdef, abstract)
    print(f"resumed from {args.ckpt_dir} at step {start}", flush=True)
  else:
    model, optimizer = build()
  n_params = count_params(model, non_embedding=True)
  tokens_per_step = args.accum * args.batch_size * args.seq_len
  print(f"corpus: {len(data):,} bytes from {where}; train {len(train_data):,}, val "
        f"{len(val_data):,}\nmodel: {args.layers} layers, d={args.d_model}, {args.heads} heads, "
        f"{n_params / 1e6:.1f}M non-embedding params; attention={args.attention}; "
        f"{tokens_per_step:,} tokens/step on {mesh.size} x {jax.devices()[0].device_kind} "
        "(data parallel)", flush=True)

  trainer = Trainer(model, optimizer, mesh, step_compiler_options(args))
  train_iter = batches(train_data, args.seq_len, (args.accum, args.batch_size),
                       args.seed + start)
  if args.bench:
    return bench(args, trainer, train_iter, n_params)

  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  history = {"step": [], "loss": [], "val_step": [], "val_loss": []}
  window, window_start, tok_s = [], time.perf_counter(), None
  peak = peak_flops(trainer.replicated.mesh.size)
  bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train",
             dynamic_ncols=True, file=sys.stdout, mininterval=2.0)
  for step in bar:
    window.append(trainer.step(*next(train_iter)))
    last = step + 1 == args.steps
    evaluate_now = args.eval_every and ((step + 1) % args.eval_every == 0 or last)
    if len(window) == LOG_EVERY or evaluate_now or last:
      losses = [float(x) for x in jax.device_get(window)]  # waits for the window's steps
      now = time.perf_counter()
      if step + 1 - start > len(window):  # the first window includes compilation
        tok_s = len(window) * tokens_per_step / (now - window_start)
      history["step"].extend(range(step + 2 - len(window), step + 2))
      history["loss"].extend(losses)
      postfix = dict(loss=f"{losses[-1]:.3f}")
      if tok_s:
        postfix["tok_s"] = f"{tok_s:,.0f}"
        if peak:
          postfix["mfu"] = f"{tok_s * flops_per_token(args, n_params) / peak:.1%}"
      bar.set_postfix(postfix)
      window = []
    if evaluate_now:
      val = evaluate(args, trainer, val_data)
      history["val_step"].append(step + 1)
      history["val_loss"].append(val)
      bar.write(f"step {step + 1}: train loss {history['loss'][-1]:.4f}, validation loss "
                f"{val:.4f}")
    if manager and ((step + 1) % args.ckpt_every == 0 or last):
      manager.save(step + 1, args=ocp.args.StandardSave(
          {"model": trainer.state[0], "optimizer": trainer.state[1]}))
    if not window:
      window_start = time.perf_counter()
  bar.close()
  if manager:
    manager.wait_until_finished()

  sample = generate(trainer.model(), args.prompt.encode(), args.gen_bytes,
                    min(args.seq_len, 512), args.seed)
  (out_dir / "samples.txt").write_bytes(args.prompt.encode() + sample)
  metrics = dict(
      args=dataclasses.asdict(args), device=jax.devices()[0].device_kind,
      jax=jax.__version__, final_train_loss=history["loss"][-1] if history["loss"] else None,
      final_val_loss=history["val_loss"][-1] if history["val_loss"] else None,
      tokens_per_s=tok_s, peak_memory_bytes=peak_memory_bytes(), history=history)
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
  plot(history, out_dir / "loss_curve.png", args)
  memory = metrics["peak_memory_bytes"]
  print(f"final validation loss {metrics['final_val_loss']:.4f}, "
        f"{tok_s or 0:,.0f} tokens/s (last window), peak device memory "
        f"{'n/a' if memory is None else f'{memory / 2**30:.1f} GiB'}; wrote {out_dir}/")
  print("sample:\n" + (args.prompt.encode() + sample).decode("utf-8", "replace"))
  return 0


def evaluate(args: Args, trainer: Trainer, val_data: np.ndarray) -> float:
  """Mean loss over the same `eval_batches` validation windows every time."""
  it = batches(val_data, args.seq_len, (args.batch_size,), seed=1234)
  return float(np.mean([trainer.eval_loss(*next(it)) for _ in range(args.eval_batches)]))


def step_seconds(run, n: int) -> np.ndarray:
  """Seconds between the completions of `n` + 1 consecutive steps, `run(i)` dispatching
  step i and returning its loss (a device scalar). Each step is dispatched before the
  previous one is waited for, so the host's dispatch overlaps the GPU's work as in
  training; an interval is one step's time, whichever side (GPU or host) bounds it."""
  stamps, pending = [], run(0)
  for i in range(1, n + 2):
    following = run(i)
    float(pending)
    stamps.append(time.perf_counter())
    pending = following
  float(pending)
  return np.diff(stamps)


def bench(args: Args, trainer: Trainer, train_iter, n_params: int) -> int:
  """Median step time over `args.bench` steps after 3 warm-up steps (`step_seconds`);
  prints one JSON line."""
  tokens_per_step = args.accum * args.batch_size * args.seq_len
  result = dict(attention=args.attention, seq_len=args.seq_len, batch_size=args.batch_size,
                deterministic_backward=args.deterministic_backward,
                triton_gemm=args.triton_gemm,
                accum=args.accum, devices=trainer.replicated.mesh.size,
                device=jax.devices()[0].device_kind)
  try:
    data = [next(train_iter) for _ in range(3 + args.bench + 2)]
    for tokens, targets in data[:3]:
      float(trainer.step(tokens, targets))
    losses = []
    def run(i):
      losses.append(trainer.step(*data[3 + i]))
      return losses[-1]
    step_s = float(np.median(step_seconds(run, args.bench)))
    tok_s = tokens_per_step / step_s
    peak = peak_flops(trainer.replicated.mesh.size)
    result.update(step_ms=1e3 * step_s, tokens_per_s=tok_s, loss=float(losses[-1]),
                  peak_memory_bytes=peak_memory_bytes(),
                  mfu=tok_s * flops_per_token(args, n_params) / peak if peak else None)
  except Exception as e:  # out of memory is a result here
    result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  print("BENCH " + json.dumps(result), flush=True)
  return 0 if "error" not in result else 3


def plot(history: dict, path: pathlib.Path, args: Args):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(history["step"], history["loss"], lw=0.8, label="train")
  if history["val_step"]:
    ax.plot(history["val_step"], history["val_loss"], "o-", label="validation")
  ax.set(xlabel="step", ylabel="loss (nats/byte)",
         title=f"{args.preset}, T={args.seq_len}, attention={args.attention}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def cli(argv=None) -> int:
  """main() with input errors (missing path, small corpus, bad lengths) as one line."""
  try:
    return main(argv)
  except (FileNotFoundError, ValueError) as e:
    print(f"train_lm.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(cli())
