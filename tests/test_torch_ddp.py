"""DistributedDataParallel over gloo with a converted model: two processes on 127.0.0.1, each
training on half of a batch, end with the parameters of one process trained on the whole batch."""
import os
import pathlib
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the DDP test needs PyTorch (the torch extra)")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch build has no gloo backend", allow_module_level=True)
import torch_ddp_worker  # noqa: E402  (tests/ is on sys.path, as for _helpers)

WORKER = pathlib.Path(__file__).resolve().parent / "torch_ddp_worker.py"
TIMEOUT_S = 180  # generous for two cold PyTorch imports on a loaded CI machine; a hang fails


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world_size, out_dir):
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: gloo must not pick another interface
    port = free_port()
    outs = [out_dir / f"rank{rank}of{world_size}.pt" for rank in range(world_size)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world_size), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, out in enumerate(outs)]
    try:
        for p in procs:
            output, _ = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, output
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [torch.load(out) for out in outs]


@pytest.mark.skip(reason="its worker timed out after 180 s in a fresh CI venv (passes in the developer venv); under investigation in issue 16")
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
