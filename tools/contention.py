"""Threads under load: the digits CNN's training epoch (examples/cnn_digits.py) with the default
thread count against one thread while a competing busy process is pinned to one core, and the
resnet-56 conv2d forward on 2 threads against 1 with no competitor.

    python tools/contention.py            # the two checks, with their targets (about a minute)
    python tools/contention.py --sweep    # also grain sizes x OpenMP wait policies (docs/performance.md)

Every measurement runs in a fresh process (the OpenMP runtime reads its wait policy when it
loads), rounds alternate between the settings compared, and medians are reported. Needs
scikit-learn (the digits data) and at least 2 CPUs.
"""
import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS_TARGET = 1.5  # default threads' epoch at most this many times the 1-thread epoch, under load
RESNET_TARGET = 1.85  # 2 threads at least this much faster than 1, quiet machine
WAIT_POLICIES = {
    "libgomp default (spin 300000)": {"GOMP_SPINCOUNT": "300000"},
    "spin 10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "OMP_WAIT_POLICY=active": {"OMP_WAIT_POLICY": "active"},
}


def _digits_epochs(threads, epochs, grain, conv_algo):
    """Seconds of each training epoch of the digits CNN (the example's model, data and batches)."""
    import numpy as np

    import fastlayers as fl

    if conv_algo != "auto":
        conv2d = importlib.import_module("fastlayers.backends.cpu.conv2d")
        conv2d.choose_algo = lambda g, direction: conv_algo

    sys.path.insert(0, str(ROOT / "examples"))
    from cnn_digits import build_model, load_data, train_epoch

    if grain:
        fl._dispatch.GRAIN_SIZE = grain
    if threads:
        fl.set_num_threads(threads)
    x_train, _, y_train, _ = load_data()
    model = build_model()
    opt = fl.optim.Adam(model, lr=3e-3)
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs + 1):  # the first epoch warms up (page faults, caches) and is dropped
        start = time.perf_counter()
        train_epoch(model, opt, x_train, y_train, 32, rng)
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def _resnet56_forward(rounds, conv_algo):
    """Seconds of the resnet-56 conv2d forward, alternating 1 and 2 threads: {threads: [s, ...]}."""
    import numpy as np

    import fastlayers as fl

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 56, 56), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    out = np.empty_like(x)
    times = {1: [], 2: []}
    for _ in range(rounds + 1):
        for n in times:
            with fl.threads(n):
                start = time.perf_counter()
                fl.conv2d(x, w, None, 1, 1, backend="cpu", algo=conv_algo, out=out)
                times[n].append(time.perf_counter() - start)
    return {n: t[1:] for n, t in times.items()}


def _rnn_small_forward(rounds):
    """Seconds of the rnn-small forward (T=50, N=32, D=128, H=256: a barrier per step) on 2 threads."""
    import numpy as np

    import fastlayers as fl

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 32, 128), dtype=np.float32)
    h0 = np.zeros((32, 256), np.float32)
    wx, wh = (0.05 * rng.standard_normal(s, dtype=np.float32) for s in ((128, 256), (256, 256)))
    b = np.zeros(256, np.float32)
    times = []
    with fl.threads(2):
        for _ in range(rounds + 1):
            start = time.perf_counter()
            fl.rnn(x, h0, wx, wh, b, backend="cpu")
            times.append(time.perf_counter() - start)
    return times[1:]


def _worker(args):
    if args.worker == "digits":
        result = _digits_epochs(args.threads, args.epochs, args.grain, args.conv_algo)
    elif args.worker == "rnn":
        result = _rnn_small_forward(args.rounds)
    else:
        result = _resnet56_forward(args.rounds, args.conv_algo)
    print(json.dumps(result))


def _run_worker(kind, env=None, **options):
    argv = [sys.executable, __file__, "--worker", kind]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


@contextmanager
def busy_core():
    """A competing process that spins on the first CPU this process may use."""
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    time.sleep(0.2)
    try:
        yield cpu
    finally:
        spinner.kill()
        spinner.wait()


def digits_under_load(rounds, epochs, conv_algo, env=None, grain=0):
    """Median epoch seconds {"default": s, "set": s, "1 thread": s}, rounds alternating in fresh
    processes: the default thread count (which follows the CPUs the competitor leaves free), the
    same count set with ``fl.set_num_threads`` (which does not), and one thread."""
    settings = (("default", 0), ("set", len(os.sched_getaffinity(0))), ("1 thread", 1))
    epochs_by_setting = {setting: [] for setting, _ in settings}
    with busy_core():
        for _ in range(rounds):
            for setting, threads in settings:
                epochs_by_setting[setting] += _run_worker("digits", env, threads=threads, epochs=epochs, grain=grain,
                                                           conv_algo=conv_algo)
    return {setting: statistics.median(s) for setting, s in epochs_by_setting.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting (default 3)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per digits run (default 3)")
    parser.add_argument("--sweep", action="store_true", help="also compare grain sizes and OpenMP wait policies")
    parser.add_argument("--conv-algo", choices=("auto", "im2col"), default="auto",
                        help="conv2d algorithm of every convolution run (default auto: what the example runs)")
    parser.add_argument("--worker", choices=("digits", "resnet56", "rnn"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--grain", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs at least 2 CPUs")
    import fastlayers as fl

    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ} or "the runtime's default"
    print(f"fastlayers {fl.__version__}, {len(os.sched_getaffinity(0))} CPUs, default threads {fl.get_num_threads()}, "
          f"grain size {fl._dispatch.GRAIN_SIZE}, wait policy {policy}")
    medians = digits_under_load(args.rounds, args.epochs, args.conv_algo)
    ratio = medians["default"] / medians["1 thread"]
    print(f"digits CNN epoch (conv2d {args.conv_algo}), one busy process pinned to a core: default threads {medians['default'] * 1e3:.1f} ms, "
          f"1 thread {medians['1 thread'] * 1e3:.1f} ms, ratio {ratio:.2f}x "
          f"(the same count set, not following the load: {medians['set'] * 1e3:.1f} ms, "
          f"{medians['set'] / medians['1 thread']:.2f}x) "
          f"(target <= {DIGITS_TARGET}x: {'met' if ratio <= DIGITS_TARGET else 'MISSED'})")
    resnet = {n: statistics.median(t) for n, t in _run_worker("resnet56", rounds=2 * args.rounds + 1, conv_algo=args.conv_algo).items()}
    speedup = resnet["1"] / resnet["2"]
    print(f"resnet-56 conv2d forward ({args.conv_algo}), no competitor: 1 thread {resnet['1'] * 1e3:.1f} ms, 2 threads "
          f"{resnet['2'] * 1e3:.1f} ms, speed-up {speedup:.2f}x "
          f"(target >= {RESNET_TARGET}x: {'met' if speedup >= RESNET_TARGET else 'MISSED'})")
    if args.sweep:
        print(f"\ndigits CNN epoch under load (median ms, conv2d {args.conv_algo}): default threads / set / 1 thread;"
              " rnn-small forward on 2 threads, no competitor (median ms)")
        for name, env in WAIT_POLICIES.items():
            rnn = statistics.median(_run_worker("rnn", env, rounds=4 * args.rounds))
            print(f"  {name:32s} rnn-small {rnn * 1e3:6.1f} ms")
            for grain in (1, 1 << 16, fl._dispatch.GRAIN_SIZE):
                m = digits_under_load(args.rounds, args.epochs, args.conv_algo, env, grain)
                print(f"  {name:32s} grain {grain:>8d}: {m['default'] * 1e3:7.1f} / {m['set'] * 1e3:7.1f} / "
                      f"{m['1 thread'] * 1e3:6.1f} = {m['default'] / m['1 thread']:5.2f}x / {m['set'] / m['1 thread']:5.2f}x")


if __name__ == "__main__":
    main()
