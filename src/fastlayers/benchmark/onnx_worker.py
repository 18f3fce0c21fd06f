"""ONNX Runtime's and OpenVINO's timings of an op's forward, in a process of their own:
``python -m fastlayers.benchmark.onnx_worker``.

The same protocol as :mod:`.torch_worker`: a JSON job on stdin (the engine, threads, dtype,
repeat, budget, seed, the progress so far and the items), one JSON reply on stdout. Each item's
forward is a one-node ONNX model (its workload's ``onnx_model``: the weights constant, as in an
exported network) on the engine's inputs, whose digest comes back with the timings. Both engines
run float32 as float32 (OpenVINO would pick bfloat16 on CPUs with AVX512_BF16) on ``threads``
threads.
"""
from __future__ import annotations

import importlib
import json
import sys

from ..cases import Case
from .runner import Progress, inputs_digest
from .timing import steady_allocator, time_call
from .workloads import make_inputs, workload

ENGINES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def engine_call(engine, case, inputs, threads):
    """The timed call of ``case``'s forward on ``inputs`` in ``engine`` ("onnxruntime" or
    "openvino"), and the engine's version."""
    import onnx

    model, feed = workload(case.op).onnx_model(onnx, case, inputs)
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return (lambda: session.run(None, feed)), ort.__version__
    ov = importlib.import_module("openvino")
    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString(), b""), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    return (lambda: request.infer(feed)), ov.__version__


def run_job(job, stream=sys.stderr):
    allocator = steady_allocator()
    bar = Progress(stream=stream, **job["progress"])
    results, version = [], None
    for item in job["items"]:
        case = Case(**{**item["case"], "shape": tuple(item["case"]["shape"])})
        bar.step(f"{case.name} {item['direction']} {job['engine']}")
        inputs = make_inputs(case, item["direction"], job["dtype"], job["seed"])
        fn, version = engine_call(job["engine"], case, inputs, job["threads"])
        results.append(dict(times_s=time_call(fn, job["repeat"], job["budget_s"]), inputs_sha256=inputs_digest(inputs)))
    return dict(version=version, threads=job["threads"], allocator=allocator, results=results)


if __name__ == "__main__":
    json.dump(run_job(json.load(sys.stdin)), sys.stdout)
