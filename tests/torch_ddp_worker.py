"""One process of tests/test_torch_ddp.py: train a converted CNN for a few SGD steps, under
DistributedDataParallel (gloo) on its share of the batch when ``world_size`` > 1, alone on the
whole batch otherwise, and save the final parameters.

    python tests/torch_ddp_worker.py RANK WORLD_SIZE PORT OUT_FILE

The process ends with ``os._exit`` once its parameters are saved, skipping the teardown of the
DDP model: in PyTorch 2.13 that teardown can deadlock. Every backward stashes a Python object (a
``contextvars`` context) in the thread-local state that each gloo collective launched during it
copies; the gloo worker thread that runs the collective drops that copy, which needs the GIL, at
the end of its loop iteration. When the main thread frees the DDP model (``Reducer`` -> the
last reference to ``ProcessGroupGloo``), it joins the worker threads while holding the GIL: a
worker still on its way to drop the last collective of the last backward then waits for the GIL
forever, and the main thread for it. On a loaded machine (the test suite, a CI runner) the worker
is often that late: this was the test's time-out in a fresh CI environment. It is PyTorch's: a
plain torch.nn model, not converted, hangs the same way (docs/torch.md).
"""
import faulthandler
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import fastlayers as fl
import fastlayers.torch as flt

BATCH, STEPS = 8, 3
# Bounds of a hung worker (tests/test_torch_ddp.py waits a little longer): collectives give up
# after COLLECTIVE_TIMEOUT_S, and after HANG_S the process prints every thread's Python stack
# and exits, so a hang shows where it happened.
COLLECTIVE_TIMEOUT_S, HANG_S = 60, 120


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 5)).double()


def main(rank, world_size, port, out_file):
    torch.set_num_threads(1)  # two processes share the test machine's cores
    model = make_model()
    report = flt.convert(model)
    assert len(report.swapped) == 4, report
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (BATCH,), generator=gen)
    trained = model
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        trained = nn.parallel.DistributedDataParallel(model)
        share = BATCH // world_size
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    with fl.threads(1):
        for _ in range(STEPS):
            optimizer.zero_grad()
            # mean over each share: DDP averages the shares' gradients, which for equal shares is
            # the gradient of the mean over the whole batch
            nn.functional.cross_entropy(trained(x), y).backward()
            optimizer.step()
    torch.save(model.state_dict(), out_file)
    if world_size > 1:
        dist.barrier()  # no rank leaves (the store's host, rank 0, included) before every rank is done


if __name__ == "__main__":
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # without the DDP model's teardown (module docstring)
