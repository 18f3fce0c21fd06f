"""rnn on the CPU backend against torch.nn.RNN and the NumPy reference: the issue-4 table.

    flock /tmp/fastlayers-bench.lock python bench/bench_rnn.py [--threads 2] [--cases a,b]
    python bench/bench_rnn.py --step-gemm   # one step's recurrent GEMM: BLAS 1 vs n threads vs ours

Times are medians (``--stat min``: minima) of ``--repeat`` calls after a warm-up, then the median over ``--rounds``
alternating rounds of fastlayers and PyTorch, in ms, float32, time-major (T, N, D) with H hidden
units. PyTorch runs in its own process (its thread pool and ours disturb each other):
``torch.nn.RNN`` (tanh, one layer) with ``torch.set_num_threads`` equal to ours and the same
weights (bias_hh zero). "fwd+bwd" is rnn then rnn_backward (dx, dh0, dWx, dWh, db); for PyTorch,
the forward with autograd on, then ``torch.autograd.grad`` of the same dhs for the same five.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import numpy as np

from fastlayers.benchmark.timing import median_ms

RNN_CASES = ("rnn-small", "rnn-large")
# ``--stat min``: the fastest call instead of the median, for a machine shared with other work,
# where the median measures the other work as much as the code (label the figures as minima).
STAT = {"median": np.median, "min": np.min}
_stat = "median"




def case_arrays(name, seed=0):
    """x_seq, h0, Wx, Wh, b, dhs (float32) of a case of fastlayers.cases, and its FLOPs
    (forward: 2*T*N*H*(D+H); the backward does twice that)."""
    from fastlayers.cases import CASES_BY_NAME

    T, N, D, H = CASES_BY_NAME[name].shape
    rng = np.random.default_rng(seed)
    # Initialisation scale (1/sqrt(fan-in)), as torch.nn.RNN: states stay O(1), tanh unsaturated.
    arrays = dict(
        x_seq=rng.uniform(-1, 1, (T, N, D)),
        h0=rng.uniform(-1, 1, (N, H)),
        Wx=rng.uniform(-1, 1, (D, H)) / math.sqrt(H),
        Wh=rng.uniform(-1, 1, (H, H)) / math.sqrt(H),
        b=rng.uniform(-1, 1, H) / math.sqrt(H),
        dhs=rng.uniform(-1, 1, (T, N, H)),
    )
    return {k: v.astype(np.float32) for k, v in arrays.items()}, 2 * T * N * H * (D + H)


# ---------------------------------------------------------------------------- PyTorch (own process)


def torch_worker(cases, threads, repeat):
    import torch

    torch.set_num_threads(threads)
    result = {}
    for name in cases:
        a, _ = case_arrays(name)
        t = {k: torch.from_numpy(v) for k, v in a.items()}
        D, H = a["Wx"].shape
        net = torch.nn.RNN(D, H, nonlinearity="tanh")
        with torch.no_grad():
            net.weight_ih_l0.copy_(t["Wx"].T)
            net.weight_hh_l0.copy_(t["Wh"].T)
            net.bias_ih_l0.copy_(t["b"])
            net.bias_hh_l0.zero_()
        h0 = t["h0"][None]
        with torch.no_grad():
            fwd = median_ms(lambda: net(t["x_seq"], h0), repeat, STAT[_stat])
        x_seq, h0g = t["x_seq"].clone().requires_grad_(True), h0.clone().requires_grad_(True)
        wrt = (x_seq, h0g, net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0)

        def fwd_bwd():
            hs, _ = net(x_seq, h0g)
            return torch.autograd.grad(hs, wrt, t["dhs"])

        result[name] = {"fwd": fwd, "fwd_bwd": median_ms(fwd_bwd, repeat, STAT[_stat])}
    print(json.dumps(result))


def torch_times(cases, threads, repeat):
    cmd = [sys.executable, __file__, "--torch-worker", "--threads", str(threads), "--repeat", str(repeat),
           "--cases", ",".join(cases), "--stat", _stat]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        print(f"PyTorch not measured: {exc.stderr.strip().splitlines()[-1]}")
        return {}
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- fastlayers


def fastlayers_times(name, threads, repeat, backend="cpu"):
    import fastlayers as fl

    a, _ = case_arrays(name)
    args = (a["x_seq"], a["h0"], a["Wx"], a["Wh"])
    hs = fl.rnn(*args, a["b"], backend=backend)
    with fl.threads(threads):
        fwd = median_ms(lambda: fl.rnn(*args, a["b"], backend=backend), repeat, STAT[_stat])

        def fwd_bwd():
            states = fl.rnn(*args, a["b"], backend=backend)
            return fl.rnn_backward(a["dhs"], *args, states, backend=backend)

        fb = median_ms(fwd_bwd, repeat, STAT[_stat])
        bwd = median_ms(lambda: fl.rnn_backward(a["dhs"], *args, hs, backend=backend), repeat, STAT[_stat])
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fb}


def step_gemm_table(cases, threads, repeat):
    """Is one recurrent step's GEMM (N x H) @ (H x H) worth BLAS threads? Compare it alone under
    BLAS at 1 and ``threads`` threads with a whole forward step of ours (forward time / T, which
    also does tanh and its share of the hoisted input GEMM)."""
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    from fastlayers.cases import CASES_BY_NAME

    print(f"one step's recurrent GEMM, float32, {repeat * 20} calls, us per call")
    print(f"| case | N x H x H | BLAS 1 thread | BLAS {threads} threads | fl forward per step ({threads} threads) |")
    print("|---|---|---|---|---|")
    for name in cases:
        T, N, D, H = CASES_BY_NAME[name].shape
        a, _ = case_arrays(name)
        h, Wh = np.asfortranarray(a["h0"]), np.asfortranarray(a["Wh"])
        per_thread = {}
        for n in (1, threads):
            with threadpool_limits(n, user_api="blas"):
                per_thread[n] = median_ms(lambda: [blas.sgemm(1.0, h, Wh) for _ in range(20)], repeat, STAT[_stat]) * 50
        ours = fastlayers_times(name, threads, repeat)["fwd"] * 1e3 / T
        print(f"| {name} | {N}x{H}x{H} | {per_thread[1]:.1f} | {per_thread[threads]:.1f} | {ours:.1f} |", flush=True)


# ---------------------------------------------------------------------------- table


def main_table(cases, threads, repeat, rounds):
    """The table. fastlayers and PyTorch are measured in alternating rounds (each round: PyTorch's
    process, then fastlayers) and each figure is the median over rounds, so a burst of load from
    other processes on the machine hits both sides alike instead of one of them."""
    from fastlayers.cases import CASES_BY_NAME

    nan = {"fwd": float("nan"), "fwd_bwd": float("nan")}
    fl_rounds, torch_rounds = [], []
    for _ in range(rounds):
        torch_rounds.append(torch_times(cases, threads, repeat))
        fl_rounds.append({name: fastlayers_times(name, threads, repeat) for name in cases})

    def median(per_round, name, key):
        return float(np.median([r.get(name, nan)[key] for r in per_round]))

    print(f"rnn float32, {threads} thread(s), median of {rounds} rounds x {_stat} of {repeat} calls, ms")
    head = ("case", "T,N,D,H", "fl fwd", "torch fwd", "numpy fwd", "fl GF/s", "fl/torch", "numpy/fl",
            "fl f+b", "torch f+b", "numpy f+b", "fl/torch", "numpy/fl")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in cases:
        flops = case_arrays(name)[1]
        f = {k: median(fl_rounds, name, k) for k in ("fwd", "fwd_bwd")}
        t = {k: median(torch_rounds, name, k) for k in ("fwd", "fwd_bwd")}
        r = fastlayers_times(name, threads, max(1, min(repeat, 3)), backend="numpy")
        cells = (name, ",".join(map(str, CASES_BY_NAME[name].shape)),
                 f"{f['fwd']:.2f}", f"{t['fwd']:.2f}", f"{r['fwd']:.2f}", f"{flops / f['fwd'] / 1e6:.0f}",
                 f"{f['fwd'] / t['fwd']:.2f}", f"{r['fwd'] / f['fwd']:.1f}",
                 f"{f['fwd_bwd']:.2f}", f"{t['fwd_bwd']:.2f}", f"{r['fwd_bwd']:.2f}",
                 f"{f['fwd_bwd'] / t['fwd_bwd']:.2f}", f"{r['fwd_bwd'] / f['fwd_bwd']:.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    one = fastlayers_times(cases[0], 1, repeat)
    many = fastlayers_times(cases[0], threads, repeat)
    print(f"{cases[0]}: 1 thread fwd {one['fwd']:.2f} / f+b {one['fwd_bwd']:.2f} ms, {threads} threads "
          f"{many['fwd']:.2f} / {many['fwd_bwd']:.2f} ms, speed-up {one['fwd'] / many['fwd']:.2f}x / "
          f"{one['fwd_bwd'] / many['fwd_bwd']:.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3, help="alternating fastlayers/PyTorch rounds")
    parser.add_argument("--cases", default=",".join(RNN_CASES))
    parser.add_argument("--step-gemm", action="store_true", help="one step's GEMM: BLAS threads vs ours")
    parser.add_argument("--stat", choices=sorted(STAT), default="median", help="per-call statistic")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _stat
    _stat = args.stat
    cases = args.cases.split(",")
    if args.torch_worker:
        torch_worker(cases, args.threads, args.repeat)
    elif args.step_gemm:
        step_gemm_table(cases, args.threads, args.repeat)
    else:
        main_table(cases, args.threads, args.repeat, args.rounds)


if __name__ == "__main__":
    main()
