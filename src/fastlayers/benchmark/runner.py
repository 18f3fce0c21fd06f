"""The engine: plan cases x directions x backends, time each with the one timer, collect one
report (a JSON-ready dict).

Backend labels: ``family[:algo][+out]``. The family is ``numpy`` (the reference), ``cpu``,
``cuda``, ``torch`` (PyTorch, timed in its own process by :mod:`.torch_worker`),
``fastlayers.torch`` (the model cases' PyTorch programs with their modules swapped for
fastlayers.torch's, in the same worker), or an inference
engine, ``onnxruntime`` or ``openvino`` (the forward as a one-node ONNX model, timed in its own
process by :mod:`.onnx_worker`: these are the peers ``PEERS`` run outside); ``:algo``
names an op's algorithm (conv2d's ``algo=``); ``+out`` marks fastlayers writing into
preallocated ``out=`` buffers. Every other row allocates its outputs on every call, as PyTorch
does, so rows without ``+out`` compare like with like, and ratios are taken against those only.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _dispatch
from ..ops._workload import SWAPPED_FAMILY
from .timing import GEMM_SHAPE, copy_roof, gemm_roof, machine_info, spread, steady_allocator, time_call
from .workloads import DIRECTIONS, OPS, call_args, make_inputs, work, workload

SCHEMA = "fastlayers-bench/2"
FAMILIES = ("numpy", "cpu", "cuda", "torch", SWAPPED_FAMILY, "onnxruntime", "openvino")
# Families timed in a worker process of their own: family -> the worker's module.
PEERS = {"torch": "fastlayers.benchmark.torch_worker", SWAPPED_FAMILY: "fastlayers.benchmark.torch_worker",
         "onnxruntime": "fastlayers.benchmark.onnx_worker", "openvino": "fastlayers.benchmark.onnx_worker"}
OUT = "+out"
# Families whose kernels take out= buffers (the reference would only add a copy; PyTorch's
# functional ops have no out=).
OUT_FAMILIES = ("cpu", "cuda")
# Families that take an op's algo= choice one algorithm per row.
ALGO_FAMILIES = ("cpu", "cuda")
DEFAULT_ALGO = "auto"
ALGOS = tuple(dict.fromkeys(a for op in OPS for a in workload(op).algos))


def parse_label(label):
    """``"cpu:auto+out"`` -> ``("cpu", "auto", True)``."""
    name, _, out = label.partition("+")
    family, _, algo = name.partition(":")
    return family, algo, bool(out)


def family(label):
    return parse_label(label)[0]


def allocates(label):
    return not parse_label(label)[2]


def label_order(label):
    """Sort key: the families' order, then the algorithms in their workload's order, ``+out`` last."""
    fam, algo, out = parse_label(label)
    return FAMILIES.index(fam), ALGOS.index(algo) if algo else -1, out


def labels_for(families, op, out_rows=True, algos=None):
    """The backend labels of ``families`` for ``op``: one per algorithm where the family takes
    the op's ``algo=`` (those in ``algos`` only, when given), and an ``+out`` twin of the default
    call where the family takes ``out=``."""
    algos = tuple(a for a in workload(op).algos if algos is None or a in algos)
    labels = []
    for fam in families:
        split = fam in ALGO_FAMILIES and algos
        labels += [f"{fam}:{a}" for a in algos] if split else [fam]
        if out_rows and fam in OUT_FAMILIES and workload(op).takes_out:
            labels.append(f"{fam}:{DEFAULT_ALGO}{OUT}" if split else f"{fam}{OUT}")
    return labels


def available_families():
    """``{family: (available, reason, ops)}`` for every backend family, torch included."""
    found = {name: (r["available"], r["reason"], set(r["ops"])) for name, r in _dispatch.available_backends().items()}
    if importlib.util.find_spec("torch") is not None:  # not imported here: it runs in its own process
        found["torch"] = (True, "PyTorch, in a separate process", None)
        found[SWAPPED_FAMILY] = (True, "PyTorch with fastlayers.torch's modules, in a separate process", None)
    else:
        found["torch"] = found[SWAPPED_FAMILY] = (False, "PyTorch is not installed (pip install fastlayers[torch])",
                                                  None)
    inference = {op for op in OPS if workload(op).onnx_forward}  # the forwards, by op name
    for engine, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        missing = [p for p in ("onnx", package) if importlib.util.find_spec(p) is None]
        found[engine] = ((False, f"{' and '.join(missing)} not installed (pip install fastlayers[bench])", None)
                         if missing else (True, f"{engine}, in a separate process (forwards only)", inference))
    return found


def plan(cases, directions, families, found, out_rows=True, algos=None):
    """The (case, direction, label) triples to time (``algos``: as in ``labels_for``), and a skip
    record for every one that cannot run here, with the reason."""
    items, skips = [], []
    for case in cases:
        for direction in directions:
            for label in labels_for(families, case.op, out_rows, algos):
                available, reason, ops = found[family(label)]
                if available:
                    reason = workload(case.op).unavailable(case, direction, family(label), ops)
                    available = reason is None
                if available:
                    items.append((case, direction, label))
                else:
                    skips.append(dict(case=case.name, direction=direction, backend=label, reason=reason))
    return items, skips


def inputs_digest(inputs):
    """SHA-256 of a measurement's inputs (values, shapes, dtypes, order): equal digests, equal inputs."""
    h = hashlib.sha256()
    for name, value in inputs.items():
        h.update(name.encode())
        if isinstance(value, np.ndarray):
            h.update(f"{value.dtype.str}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def fastlayers_call(case, direction, label, inputs):
    """The timed call of a fastlayers backend on ``inputs``, and the function that waits for it
    to finish (``None`` on the CPU). For cuda the inputs are moved to the device once, before
    timing; ``+out`` labels get their output buffers made here, once."""
    fam, algo, out = parse_label(label)
    args, kwargs = call_args(case, direction, inputs)
    kwargs = dict(kwargs, backend=fam)
    if algo:
        kwargs["algo"] = algo
    empty, sync = np.empty, None
    if fam == "cuda":
        from numba import cuda  # only here: importing fastlayers must not start CUDA

        args = tuple(cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args)
        empty, sync = cuda.device_array, cuda.synchronize
    if out:
        kwargs["out"] = workload(case.op).outputs(case, direction, inputs, empty)
    return workload(case.op).fastlayers_call(case, direction, args, kwargs), sync


class Progress:
    """``[i/n] what (k left, about s left)`` lines on a stream (stderr): the estimate is the mean
    time per measurement so far times the measurements left."""

    def __init__(self, total, stream, done=0, elapsed_s=0.0):
        self.total, self.stream, self.done = total, stream, done
        self.start = time.monotonic() - elapsed_s

    def elapsed_s(self):
        return time.monotonic() - self.start

    def step(self, what):
        left = self.total - self.done - 1
        eta = f", about {self.elapsed_s() / self.done * (left + 1):.0f} s left" if self.done else ""
        self.done += 1
        print(f"[{self.done}/{self.total}] {what} ({left} left{eta})", file=self.stream, flush=True)


SETTLE_S = 0.25


def run(cases, directions=DIRECTIONS, families=FAMILIES, dtype="float32", threads=None,
        repeat=7, budget_s=2.0, seed=0, out_rows=True, progress=None, clock=time.perf_counter, torch_device="cpu",
        algos=None, passes=1):
    """Time every (case, direction, backend) and return the report.

    ``threads`` (default: all usable CPUs) is given to fastlayers (``fl.threads``), to NumPy's BLAS
    (threadpoolctl) and to PyTorch (``torch.set_num_threads`` in its own process). Each
    measurement stays near ``budget_s`` seconds after its warm-up, with at most ``repeat``
    rounds and at least one (``timing.time_call``: a round of a fast call makes several calls). ``out_rows`` adds the ``+out`` rows; ``clock`` is the timer's clock
    for the in-process measurements (PyTorch's worker always uses ``time.perf_counter``);
    ``torch_device`` is where PyTorch runs ("cuda": its GPU, against fastlayers' cuda); ``algos``
    (default all) the ``algo=`` rows of the families that take one. ``passes``: the whole table
    is measured that many times, fastlayers' rows then each peer's in every pass, each pass with
    its share of the rounds and the budget, and a row's rounds are those of all passes: on a
    machine whose speed drifts over minutes every family then meets each phase of it."""
    progress = progress or sys.stderr
    threads = threads or _dispatch.get_num_threads()
    dtype = np.dtype(dtype).name
    allocator = steady_allocator()
    found = available_families()
    machine = machine_info(threads)  # now, so that its load average is the one the timings met first
    items, skips = plan(cases, directions, families, found, out_rows, algos)
    print(f"fastlayers bench: {len(items)} measurements, {threads} threads, {dtype}"
          + (f", {passes} passes" if passes > 1 else "") + "; measuring roofs", file=progress, flush=True)
    roofs_before = gemm_roof(dtype, threads), copy_roof(threads)
    ours = [item for item in items if family(item[2]) not in PEERS]
    timings, digests, peers, failed = {}, {}, {}, set()
    bar = Progress(len(items) * passes, progress)
    rounds, budget_s = -(-repeat // passes), budget_s / passes
    for _ in range(passes):
        with _dispatch.threads(threads), threadpool_limits(limits=threads, user_api="blas"):
            for case, direction, label in ours:
                bar.step(f"{case.name} {direction} {label}")
                inputs = make_inputs(case, direction, dtype, seed)
                digests[case.name, direction, label] = inputs_digest(inputs)
                fn, sync = fastlayers_call(case, direction, label, inputs)
                # Let the previous measurement's idle workers go to sleep first: OpenBLAS (NumPy's,
                # after the reference) and OpenMP threads busy-wait ~0.1 s after their last call, and
                # on a 2-core machine that takes a core from the next backend's threads.
                time.sleep(SETTLE_S)
                timings.setdefault((case.name, direction, label), []).extend(
                    time_call(fn, rounds, budget_s, sync, clock))
        ours_digest = {(c, d): digest for (c, d, _), digest in digests.items()}
        for peer in dict.fromkeys(family(label) for _, _, label in items if family(label) in PEERS):
            peer_items = [(c, d, label) for c, d, label in items
                          if family(label) == peer and (c.name, d, label) not in failed]
            if not peer_items:
                continue
            job = dict(engine=peer, threads=threads, dtype=dtype, repeat=rounds, budget_s=budget_s, seed=seed,
                       device=torch_device, progress=dict(total=bar.total, done=bar.done, elapsed_s=bar.elapsed_s()),
                       items=[dict(case=asdict(case), direction=direction) for case, direction, _ in peer_items])
            reply, failure = _run_worker(PEERS[peer], job, threads, progress)
            bar.done += len(peer_items)
            if reply is None:
                skips += [dict(case=c.name, direction=d, backend=label, reason=failure) for c, d, label in peer_items]
                for c, d, label in peer_items:  # a row has the rounds of every pass or none
                    failed.add((c.name, d, label))
                    timings.pop((c.name, d, label), None)
                continue
            peers[peer] = {k: v for k, v in reply.items() if k != "results"}
            for (case, direction, label), result in zip(peer_items, reply["results"]):
                expected = ours_digest.get((case.name, direction))
                if expected is None:
                    expected = ours_digest[case.name, direction] = inputs_digest(make_inputs(case, direction, dtype, seed))
                if result["inputs_sha256"] != expected:
                    skips.append(dict(case=case.name, direction=direction, backend=label,
                                      reason=f"the {peer} worker built other inputs than the engine's (their digests differ)"))
                    failed.add((case.name, direction, label))
                    timings.pop((case.name, direction, label), None)
                    continue
                timings.setdefault((case.name, direction, label), []).extend(result["times_s"])
                digests[case.name, direction, label] = result["inputs_sha256"]
    torch_info = peers.pop("torch", None) or peers.get(SWAPPED_FAMILY)  # one PyTorch, whichever worker ran
    peers.pop(SWAPPED_FAMILY, None)
    if torch_info is not None:
        torch_info = dict(version=torch_info["torch_version"], threads=torch_info["threads"],
                          device=torch_info["device"], allocator=torch_info["allocator"])
    # The roofs are measured before and after the timings and the better kept: a roof taken while
    # another process had the CPUs would make every % of roof look too good.
    roofs_after = gemm_roof(dtype, threads), copy_roof(threads)
    roofs = dict(gemm_gflops=max(roofs_before[0], roofs_after[0]), gemm_shape=GEMM_SHAPE,
                 copy_gbs=max(roofs_before[1], roofs_after[1]),
                 measured=dict(before=roofs_before, after=roofs_after))
    results = [_result(case, direction, label, dtype, timings[key], digests[key], roofs)
               for case, direction, label in items if (key := (case.name, direction, label)) in timings]
    _add_ratios(results)
    return dict(
        schema=SCHEMA,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        settings=dict(threads=threads, dtype=dtype, repeat=repeat, budget_s=budget_s, seed=seed,
                      allocator=allocator, torch=torch_info, engines=peers),
        roofs=roofs,
        results=results,
        skipped=skips,
    )


def _run_worker(module, job, threads, progress):
    """The reply of a worker process (``python -m module``: PyTorch's, the inference engines') to
    ``job``, or ``(None, reason)`` if it failed; its stderr (progress, errors) is relayed to
    ``progress`` line by line as it comes."""
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def relay():
        for line in proc.stderr:
            progress.write(line)
            progress.flush()

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    reply = proc.stdout.read()
    proc.wait()
    relaying.join()
    if proc.returncode != 0:
        return None, f"the {job['engine']} worker failed with exit code {proc.returncode} (its error is printed above)"
    return json.loads(reply), None


def _result(case, direction, label, dtype, times_s, digest, roofs):
    amount, unit = work(case, direction, dtype)
    s = spread(times_s)
    rate = amount / s["median"] / 1e9
    roof = roofs["gemm_gflops"] if unit == "flop" else roofs["copy_gbs"]
    return dict(
        case=case.name, op=case.op, direction=direction, backend=label, allocates=allocates(label), dtype=dtype,
        shape=list(case.shape), params=case.params, sweep=case.sweep, inputs_sha256=digest,
        times_ms=[t * 1e3 for t in times_s], rounds=len(times_s),
        **{f"{k}_ms": s[k] * 1e3 for k in ("median", "min", "q1", "q3", "max")},
        spread=s["relative"], unstable=s["unstable"],
        work=amount, rate=rate, rate_unit="GFLOP/s" if unit == "flop" else "GB/s", roof_pct=100 * rate / roof,
    )


def _add_ratios(results):
    """``vs_best_other``: the fastest other family's median over this one's (> 1: this is
    faster), among rows that allocate: a ``+out`` row is never the yardstick of another."""
    for r in results:
        others = [o for o in results if (o["case"], o["direction"]) == (r["case"], r["direction"])
                  and o["allocates"] and family(o["backend"]) != family(r["backend"])]
        best = min(others, key=lambda o: o["median_ms"], default=None)
        r["best_other"] = best and best["backend"]
        r["vs_best_other"] = best and best["median_ms"] / r["median_ms"]
