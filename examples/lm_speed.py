"""Tokens/s of train_lm.py's model with each attention, in one process.

For every (attention, T, batch) case this runs ``train_lm.py --preset gpt2-small
--bench N`` (3 warm-up steps, then the median of N steps' times: wall clock between step
completions with the next step already dispatched, ``train_lm.step_seconds``) and prints
one JSON line per case; a case that runs out of memory
prints its error. ``--longest`` instead doubles T from 16k until the step fails, per
attention, to find the longest trainable sequence, at ``--batch-size`` sequences per step
(default 1; one per device for a data-parallel run, e.g. 2 with ``-- --devices 2``).

  python examples/lm_speed.py --cases jflash:2048:8 cudnn:2048:8 xla:2048:8
  python examples/lm_speed.py --longest jflash cudnn --max-seq-len 131072
  python examples/lm_speed.py --longest jflash --batch-size 2 -- --devices 2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_lm  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def run(attention: str, seq_len: int, batch: int, steps: int, extra: list[str]) -> dict:
  out = io.StringIO()
  argv = ["--preset", "gpt2-small", "--attention", attention, "--seq-len", str(seq_len),
          "--batch-size", str(batch), "--bench", str(steps), *extra]
  with contextlib.redirect_stdout(out):
    train_lm.main(argv)
  jax.clear_caches()
  gc.collect()
  line = next(l for l in out.getvalue().splitlines() if l.startswith("BENCH "))
  result = json.loads(line[len("BENCH "):])
  print(json.dumps(result), flush=True)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="*", default=[], help="attention:seq_len:batch")
  parser.add_argument("--longest", nargs="*", default=[], help="attentions to push to OOM")
  parser.add_argument("--min-seq-len", type=int, default=16384)
  parser.add_argument("--max-seq-len", type=int, default=131072)
  parser.add_argument("--batch-size", type=int, default=1, help="sequences per step, --longest")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("extra", nargs="*", help="more train_lm.py flags, after --")
  args = parser.parse_args(argv)
  for case in args.cases:
    attention, seq_len, batch = case.split(":")
    run(attention, int(seq_len), int(batch), args.steps, args.extra)
  for attention in args.longest:
    t, longest = args.min_seq_len, None
    while t <= args.max_seq_len:
      if "error" in run(attention, t, args.batch_size, 2, args.extra):
        break
      longest, t = t, 2 * t
    print(json.dumps(dict(attention=attention, batch_size=args.batch_size,
                          longest_trainable_seq_len=longest,
                          tried_up_to=min(t, args.max_seq_len))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
