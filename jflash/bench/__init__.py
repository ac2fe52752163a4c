"""`python -m jflash.bench`: attention speed and memory, side by side, on one GPU.

Runs, in one process, jflash (every implementation the device has) next to
``jax.nn.dot_product_attention`` (``implementation="xla"`` and ``"cudnn"``) and JAX's
bundled Pallas kernels (``jax.experimental.pallas.ops.gpu.attention.mha`` and, on
Hopper, ``attention_mgpu``, in fp16 where it takes no bf16), each where it supports the
case; an unsupported case or an out-of-memory is a row that says so.

Measures forward, backward and forward+backward GPU time with CUPTI
(``jax.experimental.mosaic.gpu.profiler.measure``): the median of ``--iterations`` runs
after warm-up. TFLOP/s use the FlashAttention convention: forward 4·B·N·T·S·H (halved
when causal), backward 2.5x the forward, backward time = (forward+backward) − forward.
Peak temporary memory comes from XLA's compiled memory analysis.

Default grid: H in {64, 128, 256} × T in {512 .. 16k} × causal/not, bf16, B·T = 16k,
N·H = 2048 (the FlashAttention papers' grid), plus a GQA case, a long-context memory
sweep (B=1, H=128, causal, T up to 128k) and a block-size sweep (runtime vs block_kv).
Writes ``results.json``, ``results.csv`` and PNG plots to ``--out``.

The package's parts: ``cases.py`` (a case, the grid, FLOPs), ``implementations.py``
(what is compared and how each is called), ``timing.py`` (compile pool, CUPTI and
wall-clock time, one row), ``sweeps.py`` (memory, block-size and ``--tune`` sweeps; their
candidate tables live in ``jflash.tuning``), ``report.py`` (tables, results files,
``--merge``), ``plots.py`` (figures) and ``cli.py`` (the flags and a run).
"""

from jflash.bench.cases import Case
from jflash.bench.cli import main, parser
from jflash.bench.implementations import (IMPLEMENTATIONS, Unsupported, attention_fn,
                                          available_implementations)
from jflash.bench.plots import plot_all
from jflash.bench.report import (add_ratios, format_table, markdown_table, merge, write_csv,
                                 write_report)
from jflash.bench.sweeps import block_sweep, memory_sweep, sweep, sweep_forward
from jflash.bench.timing import (Compiled, compile_all, compile_case, gpu_time_ms, measure,
                                 wall_time_ms)

__all__ = ["Case", "main", "parser", "IMPLEMENTATIONS", "Unsupported", "attention_fn",
           "available_implementations", "plot_all", "add_ratios", "format_table",
           "markdown_table", "merge", "write_csv", "write_report", "block_sweep",
           "memory_sweep", "sweep", "sweep_forward", "Compiled", "compile_all", "compile_case",
           "gpu_time_ms", "measure", "wall_time_ms"]
