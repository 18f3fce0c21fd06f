"""The benchmark engine behind ``python -m fastlayers bench`` and the pytest-benchmark suite in
bench/: the case table (:mod:`fastlayers.cases`) x direction x backend, timed side by side with
this machine's roofs measured in the same run.

* :mod:`.workloads` — inputs, work (FLOPs or bytes) and the timed call of every case/backend;
* :mod:`.timing` — the timer, the GEMM and copy roofs, the machine description;
* :mod:`.runner` — runs a plan and returns the report (a JSON-ready dict);
* :mod:`.torch_worker` — PyTorch's timings, in a process of their own;
* :mod:`.report` — the table, the comparison of two reports, the plot (matplotlib, lazily).
"""
from .report import compare, format_table, load, plot
from .runner import run

__all__ = ["compare", "format_table", "load", "plot", "run"]
