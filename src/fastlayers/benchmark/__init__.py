"""The benchmark engine behind ``python -m fastlayers bench`` and the pytest-benchmark suite in
bench/: the case table (:mod:`fastlayers.cases`) x direction x backend, timed side by side with
this machine's roofs measured in the same run.

* :mod:`.workloads` — each op's workload, looked up on its spec (``SPECS[op].workload``, in
  ``ops/<family>.py``): inputs, options, output buffers, work (FLOPs or bytes) and the
  equivalent PyTorch call;
* :mod:`.timing` — the one timer, the spread of a measurement, the allocator policy, the GEMM
  and copy roofs, the machine description;
* :mod:`.runner` — the engine: plans, times (progress on stderr) and returns the report (a
  JSON-ready dict);
* :mod:`.torch_worker` — PyTorch's timings, in a process of their own, on the same inputs;
* :mod:`.report` — the table, the per-op comparison table, the comparison of two reports, the
  plot (matplotlib, lazily).
"""
from .report import compare, format_table, format_wide, load, plot
from .runner import run

__all__ = ["compare", "format_table", "format_wide", "load", "plot", "run"]
