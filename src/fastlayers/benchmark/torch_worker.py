"""PyTorch timings, in a process of their own: ``python -m fastlayers.benchmark.torch_worker``.

PyTorch's and fastlayers' OpenMP thread pools slow each other down when both live in one process,
so the runner sends this worker a JSON job on stdin (thread count, dtype, repeat, budget and the
cases) and reads one JSON list of timings from stdout; progress goes to stderr.

Forward calls run under ``torch.no_grad()`` (fastlayers keeps no graph either); backward calls
are ``torch.autograd.grad`` on a graph built once and retained, so only the backward is timed.
Inputs are the same arrays the fastlayers backends get (:func:`workloads.make_inputs`).
"""
from __future__ import annotations

import json
import sys

from ..cases import Case
from .timing import time_call
from .workloads import _conv2d_kwargs, _pool_kwargs, make_inputs


def torch_call(torch, case, direction, inputs, seed):
    """The timed PyTorch call equivalent to fastlayers' op in ``direction`` on ``inputs`` (made by
    ``make_inputs(case, direction, dtype, seed)``)."""
    nnf = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in inputs.items() if k != "input_shape"}
    if case.op == "conv2d":
        kw = _conv2d_kwargs(case)
        if direction == "forward":
            return _no_grad(torch, lambda: nnf.conv2d(t["x"], t["w"], t["b"], **kw))
        x, w = t["x"].requires_grad_(), t["w"].requires_grad_()
        b = torch.zeros(w.shape[0], dtype=w.dtype, requires_grad=True)
        y = nnf.conv2d(x, w, b, **kw)
        return lambda: torch.autograd.grad(y, (x, w, b), t["dy"], retain_graph=True)
    if case.op == "max_pool2d":
        kw = _pool_kwargs(case)
        if direction == "forward":
            return _no_grad(torch, lambda: nnf.max_pool2d(t["x"], return_indices=True, **kw))
        x = torch.from_numpy(make_inputs(case, "forward", inputs["dy"].dtype, seed)["x"]).requires_grad_()
        y, _ = nnf.max_pool2d(x, return_indices=True, **kw)
        return lambda: torch.autograd.grad(y, (x,), t["dy"], retain_graph=True)
    T, N, D, H = case.shape
    rnn = torch.nn.RNN(D, H, nonlinearity="tanh", dtype=t["Wx"].dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(t["Wx"].T)
        rnn.weight_hh_l0.copy_(t["Wh"].T)
        rnn.bias_hh_l0.zero_()
        if direction == "forward":
            rnn.bias_ih_l0.copy_(t["b"])
    h0 = t["h0"][None]
    if direction == "forward":
        return _no_grad(torch, lambda: rnn(t["x_seq"], h0))
    x_seq, h0 = t["x_seq"].requires_grad_(), h0.clone().requires_grad_()
    hs, _ = rnn(x_seq, h0)
    params = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0)
    return lambda: torch.autograd.grad(hs, (x_seq, h0, *params), t["dhs"], retain_graph=True)


def _no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()

    return call


def run_job(job):
    import torch

    torch.set_num_threads(job["threads"])
    results = []
    for i, item in enumerate(job["items"]):
        case = Case(**item["case"])
        print(f"  torch [{i + 1}/{len(job['items'])}] {case.name} {item['direction']}", file=sys.stderr, flush=True)
        inputs = make_inputs(case, item["direction"], job["dtype"], job["seed"])
        fn = torch_call(torch, case, item["direction"], inputs, job["seed"])
        results.append(time_call(fn, job["repeat"], job["budget_s"]))
    return {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "times_s": results}


if __name__ == "__main__":
    json.dump(run_job(json.load(sys.stdin)), sys.stdout)
