"""Where a GPT-2-small training step's GPU time goes: train_lm.py's step against a plain one.

Issue 11's profile. For each case it builds one training step (gpt2-small shape: 12 layers,
d=768, 12 heads of 64, vocab 256, bf16 compute on fp32 weights, AdamW with global-norm
clipping), then reports

- the median step (train_lm.step_seconds: wall clock between step completions, one step
  dispatched ahead; 20 steps after 3 warm-up steps),
- with ``--trace DIR``, a ``jax.profiler`` trace of 3 steps per case (TensorBoard /
  Perfetto; ``DIR/<case>/``) and its summary: per process (host, GPU) the busy time,
  the span and the longest events; for the GPU, the time by kind of kernel (matmuls,
  attention, fusions, ...),
- with ``--cupti``, the GPU time of one step by CUPTI
  (``jax.experimental.mosaic.gpu.profiler.measure``, per kernel, median over 5 steps),
  by kind and the 25 longest kernels (CUPTI aborts when a step has very many kernels).

Cases: ``example:<attention>`` is train_lm.py's own ``Trainer`` step (its flags after
``--``), ``before:<attention>`` the same from an older copy of train_lm.py (``--before
DIR``), ``plain:cudnn`` a plain-JAX GPT of the same shape written as functions over a
dict of arrays (fused q/k/v projection, the same optimizer; ``plain:cudnn`` is the step
issue 11 measured at 636k tokens/s at T=2048; ``plain:xla`` runs on a CPU).

  python benchmarks/lm/profile_step.py --cases plain:cudnn example:cudnn example:jflash
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import pathlib
import re
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "examples"))
import train_lm  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


# ----------------------------------------------------------------- the plain step


def plain_init(key, layers: int, d: int, seq_len: int, vocab: int = 256):
  keys = iter(jax.random.split(key, 2 + 4 * layers))
  normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
  ones, zeros = jnp.ones((d,), jnp.float32), jnp.zeros((d,), jnp.float32)
  block = lambda: dict(ln1=(ones, zeros), qkv=(normal((d, 3 * d)), jnp.zeros(3 * d)),
                       out=(normal((d, d)), zeros), ln2=(ones, zeros),
                       fc=(normal((d, 4 * d)), jnp.zeros(4 * d)), proj=(normal((4 * d, d)), zeros))
  return dict(embed=normal((vocab, d)), pos=normal((seq_len, d)), ln_f=(ones, zeros),
              blocks=[block() for _ in range(layers)])


def _layer_norm(x, scale_bias):
  scale, bias = scale_bias
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + 1e-6) * scale + bias).astype(jnp.bfloat16)


def _dense(x, weight_bias):
  weight, bias = weight_bias
  return x @ weight.astype(jnp.bfloat16) + bias.astype(jnp.bfloat16)


def plain_loss(params, tokens, targets, heads: int, implementation: str = "cudnn"):
  b, t = tokens.shape
  x = (params["embed"][tokens] + params["pos"][:t]).astype(jnp.bfloat16)
  for blk in params["blocks"]:
    q, k, v = jnp.split(_dense(_layer_norm(x, blk["ln1"]), blk["qkv"]), 3, axis=-1)
    q, k, v = (y.reshape(b, t, heads, -1) for y in (q, k, v))
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    x = x + _dense(a.reshape(b, t, -1), blk["out"])
    x = x + _dense(jax.nn.gelu(_dense(_layer_norm(x, blk["ln2"]), blk["fc"])), blk["proj"])
  logits = (_layer_norm(x, params["ln_f"]) @ params["embed"].astype(jnp.bfloat16).T)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets).mean()


def plain_step_fn(args: train_lm.Args):
  """(step, state): step(state, tokens [1, B, T], targets) -> (state, loss)."""
  params = plain_init(jax.random.PRNGKey(args.seed), args.layers, args.d_model, args.seq_len)
  mask = jax.tree.map(lambda x: x.ndim == 2, params)
  mask["embed"], mask["pos"] = False, False
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(args.lr, b1=0.9, b2=0.95, weight_decay=args.weight_decay,
                               mask=mask))

  @jax.jit
  def step(state, tokens, targets):
    params, opt_state = state
    loss, grads = jax.value_and_grad(plain_loss)(params, tokens[0], targets[0], args.heads,
                                                 args.attention)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  hlo = lambda *a: step.lower(*a).compile().as_text()
  return step, (params, tx.init(params)), hlo


def example_step_fn(args: train_lm.Args, module=train_lm):
  """train_lm.py's step (`module`: this tree's train_lm or, for "before:" cases, an older
  copy of it whose Trainer had no mesh)."""
  nnx = module.nnx
  model = module.GPT(args, nnx.Rngs(args.seed))
  if hasattr(module, "make_mesh"):
    optimizer = nnx.Optimizer(model, module.make_tx(args, args.lr), wrt=nnx.Param)
    options = (module.step_compiler_options(args)
               if hasattr(module, "step_compiler_options") else None)
    trainer = module.Trainer(model, optimizer, module.make_mesh(args), options)
    put = lambda x: jax.device_put(x, trainer._micro_batches)  # pylint: disable=protected-access
  else:
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(args.lr, b1=0.9, b2=0.95, weight_decay=args.weight_decay))
    trainer = module.Trainer(model, nnx.Optimizer(model, tx, wrt=nnx.Param))
    put = jnp.asarray
  step = trainer._step  # pylint: disable=protected-access
  hlo = lambda state, tokens, targets: step.lower(state, put(tokens), put(targets)).compile(
      ).as_text()
  return ((lambda state, tokens, targets: step(state, put(tokens), put(targets))),
          trainer.state, hlo)


# ------------------------------------------------------------------- measurement

KINDS = [  # (kind, regex on the kernel name), first match wins
    ("attention (jflash)", r"jflash|mosaic"),
    ("attention (cuDNN)", r"cudnn|sdpa|fmha|flash"),
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|cublas|dot"),
    ("collective", r"nccl|all_reduce|all-reduce"),
    ("copy/transpose", r"copy|transpose|memcpy|memset"),
    ("reduction fusion", r"reduce|reduction"),
    ("other fusion", r"fusion|loop_|input_|wrapped_"),
]


def kind_of(name: str) -> str:
  return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.I)), "other")


def profile(name: str, step, state, tokens, targets, steps: int = 20,
            cupti: bool = False) -> tuple[dict, object]:
  for _ in range(3):
    state, loss = step(state, tokens, targets)
    float(loss)
  holder = [state]
  def run(_):
    holder[0], loss = step(holder[0], tokens, targets)
    return loss
  wall_ms = 1e3 * float(np.median(train_lm.step_seconds(run, steps)))
  state = holder[0]
  result = dict(case=name, step_ms=round(wall_ms, 3),
                tokens_per_s=round(tokens.size / wall_ms * 1e3))
  if cupti:  # GPU time of each kernel; CUPTI drops records when a step has very many
    from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
    per_kernel = collections.defaultdict(list)
    for _ in range(5):
      (state, loss), kernels = profiler.measure(step, aggregate=False)(state, tokens, targets)
      float(loss)
      totals = collections.Counter()
      for kernel, ms in kernels:
        totals[kernel] += ms
      for kernel, ms in totals.items():
        per_kernel[kernel].append(ms)
    median = {k: statistics.median(v) for k, v in per_kernel.items()}
    by_kind = collections.Counter()
    for kernel, ms in median.items():
      by_kind[kind_of(kernel)] += ms
    result.update(gpu_step_ms=round(sum(median.values()), 3), kernels=len(median),
                  by_kind={k: round(v, 3) for k, v in by_kind.most_common()},
                  top=[(k[:120], round(v, 3)) for k, v in
                       sorted(median.items(), key=lambda kv: -kv[1])[:25]])
  print(json.dumps(result), flush=True)
  return result, state


def summarize_trace(trace_dir: pathlib.Path, case: str, top: int = 40) -> dict:
  """Per process of the Perfetto trace: time covered by events (their union), span, and
  the `top` event names by total duration; for GPUs the union is the busy time."""
  import gzip  # pylint: disable=g-import-not-at-top
  path = max(trace_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  events = json.load(gzip.open(path))["traceEvents"]
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  summary = {}
  for pid, pname in names.items():
    spans = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                   if e.get("ph") == "X" and e["pid"] == pid and "dur" in e)
    if not spans:
      continue
    busy, end = 0.0, -1e30
    for start, stop, _ in spans:
      busy += max(0.0, stop - max(start, end))
      end = max(end, stop)
    totals = collections.Counter()
    for start, stop, name in spans:
      totals[name[:100]] += stop - start
    args_of = {}  # one event's args per name (the GPU's carry the HLO op)
    for e in events:
      if e.get("ph") == "X" and e["pid"] == pid and e["name"][:100] not in args_of:
        args_of[e["name"][:100]] = {k: str(v)[:80] for k, v in e.get("args", {}).items()}
    summary[pname] = dict(events=len(spans), busy_ms=round(busy / 1e3, 3),
                          span_ms=round((end - spans[0][0]) / 1e3, 3),
                          top_ms=[(n, round(t / 1e3, 3)) for n, t in totals.most_common(top)])
    if "GPU" in pname:
      summary[pname]["top_ms"] = [(n, round(t / 1e3, 3), args_of.get(n))
                                  for n, t in totals.most_common(top)]
      by_kind = collections.Counter()
      for name, t in totals.items():
        by_kind[kind_of(name)] += t
      summary[pname]["by_kind_ms"] = {k: round(v / 1e3, 3) for k, v in by_kind.most_common()}
  print(json.dumps(dict(case=case, trace=str(path), processes=summary)), flush=True)
  return summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="+", default=["plain:cudnn", "example:cudnn"])
  parser.add_argument("--seq-len", type=int, default=2048)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--trace", help="write a jax.profiler trace of 3 steps per case here")
  parser.add_argument("--cupti", action="store_true", help="also CUPTI's time per kernel")
  parser.add_argument("--top", type=int, default=40, help="longest events listed per process")
  parser.add_argument("--hlo", help="write each case's optimized HLO here")
  parser.add_argument("--before", help="a directory with an older train_lm.py, run by "
                      "'before:<attention>' cases")
  parser.add_argument("--random-tokens", action="store_true",
                      help="uniform random bytes instead of a batch of the default corpus")
  parser.add_argument("extra", nargs="*", help="more train_lm.py flags, after --")
  ns = parser.parse_args(argv)
  for case in ns.cases:
    kind, attention = case.split(":")
    argv = ["--preset", "gpt2-small", "--attention", attention, "--seq-len",
            str(ns.seq_len), "--batch-size", str(ns.batch_size), *ns.extra]
    args = train_lm.parse_args(argv)
    if kind == "plain":
      step, state, hlo = plain_step_fn(args)
    elif kind == "before":
      spec = importlib.util.spec_from_file_location(
          "train_lm_before", pathlib.Path(ns.before) / "train_lm.py")
      module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      step, state, hlo = example_step_fn(module.parse_args(argv), module)
    else:
      step, state, hlo = example_step_fn(args)
    if ns.random_tokens:
      rng = np.random.default_rng(0)
      tokens = rng.integers(0, 256, (1, ns.batch_size, ns.seq_len), dtype=np.int32)
      targets = np.roll(tokens, -1, axis=-1)
    else:  # real text: the embedding gradients' scatter-adds collide as in training
      train, _ = train_lm.split(train_lm.load_corpus(None)[0], ns.seq_len)
      tokens, targets = next(train_lm.batches(train, ns.seq_len, (1, ns.batch_size), 0))
    if ns.hlo:
      pathlib.Path(ns.hlo).mkdir(parents=True, exist_ok=True)
      (pathlib.Path(ns.hlo) / f"{case.replace(':', '_')}.txt").write_text(
          hlo(state, tokens, targets))
    _, state = profile(case, step, state, tokens, targets, cupti=ns.cupti)
    if ns.trace:
      trace_dir = pathlib.Path(ns.trace) / case.replace(":", "_")
      with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(3):
          state, loss = step(state, tokens, targets)
        float(loss)
      summarize_trace(trace_dir, case, ns.top)
    del state
    jax.clear_caches()
  return 0


if __name__ == "__main__":
  sys.exit(main())
