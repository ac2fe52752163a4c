"""A CPU-side register-pressure proxy for the Mosaic GPU kernels (no GPU needed).

Lowers jflash's Mosaic GPU backward (or forward) for cuda on this machine, captures each
kernel's Mosaic GPU module after Python's lowering (per-register operations: arith,
vector<2xf32>, llvm inline asm for wgmma), and counts, at each operation of the
consumers' loop bodies (scf.for with vector<2xf32> carries), the 32-bit values live:
defined earlier in the body (or carried) and used later. View operations (extracts,
shuffles, bitcasts, inserts, casts) cost nothing and extend the ranges of what they
view; constants are not counted; a vector<Nxi1> counts N; values from before the loop
are reported apart ("live-ins"). Printed per loop: the peak, the op where it occurs,
and what is live there, by defining op.

It is a proxy, not ptxas: LLVM and ptxas reorder, CSE and rematerialise. Calibration
(H200, jax 0.11.2, HEAD of issue 10 session 13, T = 16k, H = 128): pair dK/dV causal
proxy 268 -> ptxas 164 B spilled, non-causal 236 -> 8 B; the dQ kernel 172 -> 0 B; the
fused kernel causal 239 -> 348 B and non-causal 208 -> 196 B (so the fused kernel
spills more than its loop bodies' pressure says: see BUILD_NOTES, session 14).

  PYTHONPATH=<tree> python benchmarks/h200_issue10/mlir_pressure.py H T CAUSAL MODE [OUT]

MODE: 0 the deterministic backward, 1 the fused backward, fwd the forward (default
configs for H, T; B = 1, N = 2048 / H). OUT: a folder to write the modules to.
"""
import collections, os, re, sys

VIEWS = {"vector.extract_strided_slice", "vector.extract", "vector.shuffle", "vector.bitcast",
         "llvm.bitcast", "llvm.extractelement", "llvm.insertelement", "vector.insert",
         "builtin.unrealized_conversion_cast", "llvm.extractvalue", "llvm.insertvalue",
         "vector.insert_strided_slice", "vector.broadcast", "vector.splat"}
FREE = {"arith.constant", "llvm.mlir.constant", "llvm.mlir.undef", "llvm.mlir.poison"}
BITS = {"f32": 32, "i32": 32, "bf16": 16, "f16": 16, "i1": 1, "i8": 8, "i64": 64,
        "index": 64, "i16": 16}
NAME = re.compile(r"%[\w$.#-]+")


def cost(t):
  t = t.strip()
  m = re.match(r"vector<(\d+)x(\w+)>", t)
  if m:
    n, e = int(m.group(1)), m.group(2)
    return n if e == "i1" else max(1, n * BITS.get(e, 32) // 32)
  if t.startswith("!llvm.struct"):
    return sum(2 if f in ("i64", "ptr") else 1
               for f in re.findall(r"\b(f32|i32|i64|ptr|f16|bf16)\b", t))
  if t in BITS:
    return 2 if BITS[t] == 64 else 1
  return 2 if t.startswith("!llvm.ptr") else 1


def parse(line):
  """(result names, op, used names, result types) of one printed op."""
  line = line.split(" loc(")[0]
  if "=" not in line or not line.strip().startswith("%"):
    return [], None, NAME.findall(line), []
  lhs, rhs = line.split("=", 1)
  op = rhs.strip().split(" ")[0].split("(")[0]
  tpart = rhs.rsplit(" : ", 1)[-1] if " : " in rhs else ""
  if "->" in tpart:
    tpart = tpart.split("->")[-1]
  elif " to " in tpart:
    tpart = tpart.split(" to ")[-1]
  tys = [x for x in re.split(r",(?![^<(]*[>)])", tpart.strip()) if x.strip()]
  res = NAME.findall(lhs)
  multi = re.match(r"\s*(%[\w$.-]+):(\d+)\s*$", lhs)
  if multi:
    res = [f"{multi.group(1)}#{i}" for i in range(int(multi.group(2)))]
  return res, op, NAME.findall(rhs), tys


def pressure(text, out=sys.stdout):
  lines = text.split("\n")
  gdef = {}
  for line in lines:
    res, op, _, tys = parse(line)
    for r in res[:1]:
      gdef[r.split("#")[0]] = (op, tys[-1] if tys else "?")

  def region_end(i):
    depth = 0
    for j in range(i, len(lines)):
      depth += lines[j].count("{") - lines[j].count("}")
      if depth <= 0 and j > i:
        return j
    return len(lines)

  for s in (i for i, l in enumerate(lines)
            if "scf.for" in l and "iter_args" in l and "vector<2xf32>" in l):
    body = lines[s:region_end(s) + 1]
    defs, last, types, kinds, roots = {}, {}, {}, {}, {}
    for a in re.findall(r"(%arg\d+) = ", body[0].split(" loc(")[0]):
      defs[a], kinds[a], roots[a] = 0, "iter_arg", {a}
      types[a] = "vector<2xf32>" if "vector<2xf32>" in body[0] else "i32"
    for k, line in enumerate(body[1:], 1):
      res, op, uses, tys = parse(line)
      src = set()
      for u in uses:
        keys = [u] if u in defs else [x for x in (f"{u}#{i}" for i in range(256)) if x in defs]
        if not keys:
          last[u] = k  # defined before the loop
        for x in keys:
          last[x] = k
          for r in roots.get(x, ()):
            last[r] = max(last.get(r, 0), k)
          src |= roots.get(x, set())
      for i, r in enumerate(res):
        defs[r], kinds[r] = k, op
        types[r] = (tys[-1] if len(res) == 1 and tys else
                    tys[i] if i < len(tys) else (tys[-1] if tys else "?"))
        roots[r] = set(src) if op in VIEWS else (set() if op in FREE else {r})
    n = len(body)
    delta, ranges = [0] * (n + 2), {}
    for v, d in defs.items():
      if kinds[v] in FREE or kinds[v] in VIEWS:
        continue
      u, c = last.get(v, d), cost(types[v])
      if u > d:
        delta[d + 1] += c
        delta[u + 1] -= c
        ranges[v] = (d, u, c)
    live_in = collections.Counter()
    for u in set(last) - set(defs):
      op, ty = gdef.get(u.split("#")[0], (None, "?"))
      if op is not None and op not in FREE and op not in VIEWS:
        live_in[op] += cost(ty)
    live, peak, at = 0, 0, 0
    for k in range(n + 1):
      live += delta[k]
      if live > peak:
        peak, at = live, k
    print(f"  loop at line {s + 1} ({n} lines): peak {peak}, live-ins "
          f"{sum(live_in.values())}; at: {body[at].split(' loc(')[0].strip()[:90]}", file=out)
    by = collections.Counter()
    for v, (d, u, c) in ranges.items():
      if d < at <= u:
        by[(kinds[v], types[v][:40])] += c
    print("    live there: " + ", ".join(f"{c} {kd} {ty}" for (kd, ty), c in by.most_common(6)
                                         if c >= 4), file=out)


def main():
  h, t, causal, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
  out_dir = sys.argv[5] if len(sys.argv) > 5 else None
  # The lowering and capture are ptxas_cpu.py's (MODE 0 / 1 there: bwd / fused).
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                  "ptxas_cpu"))
  import ptxas_cpu
  for name, text, _ in ptxas_cpu.lower(h, t, causal, {"0": "bwd", "1": "fused"}.get(mode, mode)):
    print(f"{name} (H={h}, T={t}, causal={int(causal)}, mode={mode}):")
    if out_dir:
      with open(os.path.join(out_dir, f"{name}_h{h}_t{t}_c{int(causal)}_{mode}.mlir"), "w") as fh:
        fh.write(text)
    pressure(text)


if __name__ == "__main__":
  main()
