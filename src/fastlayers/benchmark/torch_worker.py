"""PyTorch's timings, in a process of their own: ``python -m fastlayers.benchmark.torch_worker``.

PyTorch's and fastlayers' OpenMP thread pools slow each other down when both live in one process,
so the engine sends this worker a JSON job on stdin (threads, dtype, repeat, budget, seed, the
device, the progress so far and the items) and reads one JSON reply from stdout; progress goes to stderr.
The worker builds each item's inputs as the engine does (:func:`workloads.make_inputs`, same
seed) and returns their digest with the timings, so the engine can show that both sides timed
the same arrays; it times with the engine's timer under the engine's allocator policy.
"""
from __future__ import annotations

import json
import sys

from ..cases import Case
from ..ops._workload import SWAPPED_FAMILY
from .runner import Progress, inputs_digest
from .timing import steady_allocator, time_call
from .workloads import make_inputs, workload


def run_job(job, stream=sys.stderr):
    allocator = steady_allocator()
    import torch

    torch.set_num_threads(job["threads"])
    device, sync = job.get("device", "cpu"), None
    if device == "cuda":
        # cuDNN picks its fastest algorithm; FP32 means FP32 (no TF32), as fastlayers computes.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        sync = torch.cuda.synchronize
    # The fastlayers.torch rows: the model's torch.nn modules swapped for fastlayers.torch's.
    swapped = dict(swap=True) if job.get("engine") == SWAPPED_FAMILY else {}
    bar = Progress(stream=stream, **job["progress"])
    results = []
    for item in job["items"]:
        case = Case(**{**item["case"], "shape": tuple(item["case"]["shape"])})
        bar.step(f"{case.name} {item['direction']} {job.get('engine', 'torch')}")
        inputs = make_inputs(case, item["direction"], job["dtype"], job["seed"])
        fn = workload(case.op).torch_call(torch, case, item["direction"], inputs, job["seed"], device, **swapped)
        results.append(dict(times_s=time_call(fn, job["repeat"], job["budget_s"], sync),
                            inputs_sha256=inputs_digest(inputs)))
    return dict(torch_version=torch.__version__, threads=torch.get_num_threads(), device=device,
                allocator=allocator, results=results)


if __name__ == "__main__":
    json.dump(run_job(json.load(sys.stdin)), sys.stdout)
