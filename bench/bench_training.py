"""Training step and inference of small CNNs through fastlayers.layers against the same models in
PyTorch (and, for inference, ONNX Runtime and OpenVINO where installed), on the CPU, side by side
in one run, and where fastlayers' step spends its time.

    python bench/bench_training.py                  # every model, 2 threads
    python bench/bench_training.py --threads 1 --repeat 20 --budget 5
    python bench/bench_training.py --models vgg --inference   # also batch 32 and batch 1 inference

The VGG model's inference and step are also cases of the benchmark engine, beside ONNX Runtime
and OpenVINO: ``python -m fastlayers bench --cases models``.

The models: the digits CNN of examples/cnn_digits.py (batch 32 x 1 x 8 x 8); a CIFAR-shaped CNN
with batch normalisation and dropout (batch 32 x 3 x 32 x 32): Conv2D(3, 32) -> BatchNorm2d ->
ReLU -> MaxPool2D -> Conv2D(32, 64) -> BatchNorm2d -> ReLU -> MaxPool2D -> Flatten -> Dropout ->
Dense(4096, 10); and a VGG-style CNN (3x32x32): three Conv(3x3, padding 1) -> ReLU -> MaxPool2D(2)
stages of 32, 64 and 128 channels, Flatten, Dense(2048, 10). A step is zero_grad, forward, softmax cross-entropy, backward and an SGD
step with momentum, timed by the engine's timer (fastlayers.benchmark.timing.time_call); PyTorch
runs the same step in a process of its own (torch.nn with autograd, torch.optim.SGD) with the same
thread count and the engine's allocator policy in both processes.

The breakdown times every layer's forward and backward inside fastlayers' step: Conv2D,
MaxPool2D, BatchNorm2d, ReLU and Dense call the compiled kernels; Flatten, Dropout, the loss and
the optimiser are NumPy.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from fastlayers.benchmark.models import MODELS as MODEL_WORKLOADS
from fastlayers.cases import CASES_BY_NAME

BATCH = 32
MODELS = ("digits", "cifar-bn", "vgg")
VGG, VGG_CASE = MODEL_WORKLOADS["vgg"], CASES_BY_NAME["vgg-n32"]


def vgg_weights(seed):
    """The VGG model case's weights (``python -m fastlayers bench --cases models``), drawn from ``seed``."""
    return VGG.inputs(VGG_CASE, "forward", np.dtype(np.float32), seed)

INFERENCE_BATCHES = (32, 1)


def input_shape(model, batch=BATCH):
    return (batch, 1, 8, 8) if model == "digits" else (batch, 3, 32, 32)


def fastlayers_model(model, seed=0):
    from fastlayers import layers as L

    kw = dict(rng=np.random.default_rng(seed))
    if model == "digits":
        return L.Sequential(
            L.Conv2D(1, 16, 3, padding=1, **kw), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(16, 32, 3, padding=1, **kw), L.ReLU(), L.MaxPool2D(2),
            L.Flatten(), L.Dense(32 * 2 * 2, 10, **kw))
    if model == "vgg":  # the engine's model case, with its weights
        return VGG.fastlayers_model(VGG_CASE, vgg_weights(seed))
    return L.Sequential(
        L.Conv2D(3, 32, 3, padding=1, bias=False, **kw), L.BatchNorm2d(32), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(32, 64, 3, padding=1, bias=False, **kw), L.BatchNorm2d(64), L.ReLU(), L.MaxPool2D(2),
        L.Flatten(), L.Dropout(0.3, **kw), L.Dense(64 * 8 * 8, 10, **kw))


def torch_model(model):
    import torch
    import torch.nn as nn

    if model == "vgg":
        return VGG.torch_model(torch, VGG_CASE, vgg_weights(0))
    if model == "digits":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8 * 8, 10))


def batch(model, seed=0, size=BATCH):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(input_shape(model, size)).astype(np.float32), rng.integers(0, 10, size)


def fastlayers_step(model):
    import fastlayers as fl

    net = fastlayers_model(model)
    opt = fl.optim.SGD(net, lr=0.01, momentum=0.9)
    x, labels = batch(model)

    def step():
        opt.zero_grad()
        _, dlogits = fl.losses.softmax_cross_entropy(net.forward(x), labels)
        net.backward(dlogits, input_grad=False)  # the images need no gradient
        opt.step()

    return net, step


def breakdown(net, step, steps):
    """Seconds per step spent in each layer kind's forward and backward (wrapped timers), and in
    the rest of the step (loss, optimiser, Python around them)."""
    spent = collections.Counter()
    originals = []
    for layer in net.layers:
        for method in ("forward", "backward"):
            fn = getattr(layer, method)

            def timed(*args, _fn=fn, _key=f"{type(layer).__name__} {method}", **kwargs):
                start = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    spent[_key] += time.perf_counter() - start

            originals.append((layer, method))
            setattr(layer, method, timed)
    try:
        step()  # warm-up
        spent.clear()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - start
    finally:
        for layer, method in originals:
            delattr(layer, method)  # back to the class's method
    per_step = {key: seconds / steps for key, seconds in spent.items()}
    per_step["loss, optimiser, rest"] = total / steps - sum(per_step.values())
    return total / steps, per_step


def torch_worker(model, threads, repeat, budget):
    """In PyTorch's own process: median seconds of its training step."""
    import torch

    from fastlayers.benchmark.timing import steady_allocator, time_call

    steady_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_model(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, labels = (torch.from_numpy(a) for a in batch(model))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(net(x), labels).backward()
        opt.step()

    return statistics.median(time_call(step, repeat, budget))


PEERS = ("fastlayers", "PyTorch", "ONNX Runtime", "OpenVINO")


def _peer_forward(peer, model, x, threads):
    """A function running one inference of ``model`` on ``x`` with ``peer``, eval mode."""
    if peer == "fastlayers":
        import fastlayers as fl

        fl.set_num_threads(threads)
        net = fastlayers_model(model).eval()

        def forward():
            with fl.no_grad():
                return net.forward(x)

        return forward
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, xt = torch_model(model).eval(), torch.from_numpy(x)
    if peer == "PyTorch":
        def forward():
            with torch.no_grad():
                return net(xt)

        return forward
    if peer == "ONNX Runtime":
        import io

        import onnxruntime as ort

        graph = io.BytesIO()
        torch.onnx.export(net, (xt,), graph, dynamo=False, input_names=["x"])  # the exporter needs `onnx`
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"x": x})
    import openvino as ov

    # float32 forced: OpenVINO picks bfloat16 by default on CPUs with AVX512_BF16.
    compiled = ov.Core().compile_model(ov.convert_model(net, example_input=xt), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def inference_worker(peer, model, size, threads, repeat, budget):
    """In a process of its own: median seconds of one inference of ``model`` on a batch of ``size``."""
    from fastlayers.benchmark.timing import steady_allocator, time_call

    steady_allocator()
    forward = _peer_forward(peer, model, batch(model, size=size)[0], threads)
    return statistics.median(time_call(forward, repeat, budget))


def _in_own_process(args, *worker):
    """(seconds, None) from a worker run in a fresh process, or (None, why it could not run)."""
    argv = [sys.executable, __file__, *worker, "--threads", str(args.threads), "--repeat", str(args.repeat),
            "--budget", str(args.budget)]
    try:
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout), None
    except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        lines = ((getattr(exc, "stderr", "") or str(exc)).strip().splitlines() or ["no output"])
        return None, lines[-1]


def print_inference(args, model):
    for size in INFERENCE_BATCHES:
        times = {peer: _in_own_process(args, "--inference-worker", peer, "--model", model, "--batch", str(size))
                 for peer in PEERS}
        cells = [f"{peer} {1e3 * t:.3f} ms" if t is not None else f"{peer} not measured ({why})"
                 for peer, (t, why) in times.items()]
        others = [t for peer, (t, _) in times.items() if peer != "fastlayers" and t is not None]
        ours = times["fastlayers"][0]
        ratio = f"   fastlayers / best other {ours / min(others):.2f}" if ours is not None and others else ""
        print(f"\n{model} inference, batch {size}: " + " | ".join(cells) + ratio)


COMPILED = ("Conv2D", "MaxPool2D", "BatchNorm2d", "ReLU", "Dense")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15, help="most timed steps per figure (median)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per figure that cap the steps")
    parser.add_argument("--inference", action="store_true",
                        help=f"also time inference (eval mode) at batch {' and '.join(map(str, INFERENCE_BATCHES))} "
                             f"against PyTorch, ONNX Runtime and OpenVINO (each optional: pip install torch onnx "
                             f"onnxruntime openvino)")
    parser.add_argument("--torch-worker", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--inference-worker", metavar="PEER", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:
        print(json.dumps(torch_worker(args.torch_worker, args.threads, args.repeat, args.budget)))
        return 0
    if args.inference_worker:
        print(json.dumps(inference_worker(args.inference_worker, args.model, args.batch, args.threads, args.repeat,
                                          args.budget)))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")

    import fastlayers as fl
    from fastlayers.benchmark.timing import allocator_line, steady_allocator, time_call

    allocator = steady_allocator()
    fl.set_num_threads(args.threads)
    print(f"training step (zero_grad, forward, loss, backward, SGD momentum), float32, batch {BATCH}, "
          f"{args.threads} threads, median of up to {args.repeat} steps; {allocator_line(allocator)}")
    for model in models:
        net, step = fastlayers_step(model)
        ours = statistics.median(time_call(step, args.repeat, args.budget))
        theirs, why = _in_own_process(args, "--torch-worker", model)
        if theirs is not None:
            torch_text = f"PyTorch {1e3 * theirs:8.2f} ms   fastlayers / PyTorch {ours / theirs:5.2f}"
        else:
            torch_text = f"PyTorch not measured: {why}"
        print(f"\n{model} {'x'.join(map(str, input_shape(model)))}: fastlayers {1e3 * ours:8.2f} ms   {torch_text}")
        total, parts = breakdown(net, step, max(3, args.repeat // 3))
        compiled = sum(s for key, s in parts.items() if key.split()[0] in COMPILED)
        print(f"  where fastlayers' step goes ({total * 1e3:.2f} ms per step, timers on): compiled kernels "
              f"({', '.join(COMPILED)}) {100 * compiled / total:.0f}%, outside them {100 * (1 - compiled / total):.0f}%")
        for key, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"    {key:24} {1e3 * seconds:8.3f} ms  {100 * seconds / total:5.1f}%")
        if args.inference:
            print_inference(args, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
