"""DistributedDataParallel over gloo with a converted model: two processes on 127.0.0.1, each
training on half of a batch, end with the parameters of one process trained on the whole batch."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="the DDP test needs PyTorch (the torch extra)")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch build has no gloo backend", allow_module_level=True)
import torch_ddp_worker  # noqa: E402  (tests/ is on sys.path, as for _helpers)

WORKER = pathlib.Path(__file__).resolve().parent / "torch_ddp_worker.py"
# A run takes seconds; a worker that hangs ends itself after torch_ddp_worker.HANG_S (printing
# its stacks), and this bound, a little later, catches one that cannot.
TIMEOUT_S = torch_ddp_worker.HANG_S + 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world_size, out_dir):
    """Start ``world_size`` workers, wait for all of them (one deadline), and return their saved
    parameters. Their output goes to files, not pipes (a full pipe would block a worker that
    nobody reads yet); when one fails or time runs out, the others are killed and every
    worker's output is in the error."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread per worker: two processes share the cores
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: gloo must not pick another interface
    port = free_port()
    outs = [out_dir / f"rank{rank}of{world_size}.pt" for rank in range(world_size)]
    logs = [out_dir / f"rank{rank}of{world_size}.log" for rank in range(world_size)]
    procs = []
    try:
        for rank, (out, log) in enumerate(zip(outs, logs)):
            with open(log, "w") as f:
                procs.append(subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world_size), str(port),
                                               str(out)], env=env, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs) and all(p.returncode in (None, 0) for p in procs):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * world_size:
        report = "\n".join(f"--- rank {rank} (exit {code}):\n{log.read_text()}"
                           for rank, (code, log) in enumerate(zip(codes, logs)))
        pytest.fail(f"DDP workers of world size {world_size} did not all succeed within {TIMEOUT_S} s:\n{report}")
    return [torch.load(out) for out in outs]


def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    (alone,) = run_workers(1, tmp_path)
    ranks = run_workers(2, tmp_path)
    for name, expected in alone.items():
        for rank, state in enumerate(ranks):
            # float64; the two runs differ only in the order gradients are summed (two halves
            # averaged vs one batch): rounding ~1e-16 per step, compounded over 3 steps
            error = torch.linalg.vector_norm(state[name] - expected)
            assert error <= 1e-12 * torch.linalg.vector_norm(expected), f"rank {rank} {name}: {error}"
    # and the training moved every parameter: equal to the start would make the test vacuous
    initial = torch_ddp_worker.make_model().state_dict()
    assert all(not torch.equal(initial[name], alone[name]) for name in alone)
