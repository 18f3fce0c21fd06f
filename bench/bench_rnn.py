"""rnn on the CPU: the per-op comparison table, and the experiment behind the kernel's threading.

    python bench/bench_rnn.py [--threads 2] [--cases a,b]   # the table (the engine's --wide view)
    python bench/bench_rnn.py --step-gemm   # one step's recurrent GEMM: BLAS 1 vs n threads vs ours

The table is ``python -m fastlayers bench --ops rnn --backends numpy,cpu,torch --wide``:
``torch.nn.RNN`` (tanh, one layer, the same weights, its second bias zero) in its own process,
everything allocating, ``+out`` into preallocated buffers; other options go to the engine
(``--repeat``, ``--json``, ...). The experiment times with the engine's timer on the engine's
inputs, float32, time-major (T, N, D) with H hidden units.
"""
from __future__ import annotations

import _op_view
import numpy as np

import fastlayers as fl
from fastlayers.benchmark.runner import fastlayers_call
from fastlayers.benchmark.timing import median_ms
from fastlayers.benchmark.workloads import make_inputs
from fastlayers.cases import CASES, CASES_BY_NAME

RNN_CASES = tuple(c.name for c in CASES if c.op == "rnn")


def step_gemm_table(names, threads, repeat):
    """Is one recurrent step's GEMM (N x H) @ (H x H) worth BLAS threads? Compare it alone under
    BLAS at 1 and ``threads`` threads with a whole forward step of ours (forward time / T, which
    also does tanh and its share of the hoisted input GEMM)."""
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    print(f"one step's recurrent GEMM, float32, 20 calls x median of {repeat}, us per call")
    print(f"| case | N x H x H | BLAS 1 thread | BLAS {threads} threads | fl forward per step ({threads} threads) |")
    print("|---|---|---|---|---|")
    for name in names:
        case = CASES_BY_NAME[name]
        T, N, D, H = case.shape
        inputs = make_inputs(case, "forward", np.float32)
        h, Wh = np.asfortranarray(inputs["h0"]), np.asfortranarray(inputs["Wh"])
        per_thread = {}
        for n in (1, threads):
            with threadpool_limits(n, user_api="blas"):
                per_thread[n] = median_ms(lambda: [blas.sgemm(1.0, h, Wh) for _ in range(20)], repeat) * 50
        fn, _ = fastlayers_call(case, "forward", "cpu", inputs)
        with fl.threads(threads):
            ours = median_ms(fn, repeat) * 1e3 / T
        print(f"| {name} | {N}x{H}x{H} | {per_thread[1]:.1f} | {per_thread[threads]:.1f} | {ours:.1f} |", flush=True)


def main(argv=None):
    parser = _op_view.parser(__doc__, repeat=11)
    parser.add_argument("--step-gemm", action="store_true", help="one step's GEMM: BLAS threads vs ours")
    args, names, rest = _op_view.parse(parser, argv, "rnn", RNN_CASES, ("step_gemm",))
    if args.step_gemm:
        step_gemm_table(names, args.threads, args.repeat)
        return 0
    return _op_view.table("rnn", names, args.threads, args.repeat, rest)


if __name__ == "__main__":
    raise SystemExit(main())
