"""Command line: ``python -m fastlayers bench ...`` (also the ``fastlayers`` console script).

Examples::

    python -m fastlayers bench --quick --plot bench.png --json bench.json
    python -m fastlayers bench --ops conv2d --backends cpu,torch --threads 1
    python -m fastlayers bench --add-case mine=conv2d:8,64,32,32:F=64,kernel_size=3,padding=1 --cases mine
    python -m fastlayers bench --ops max_pool2d --wide       # one row per case, one column per backend
    python -m fastlayers bench --cases models --wide          # a whole CNN: inference and a training step
    python -m fastlayers bench --compare before.json after.json
"""
from __future__ import annotations

import argparse
import json
import sys

from ._version import __version__
from .benchmark.runner import ALGOS, FAMILIES
from .benchmark.workloads import DIRECTIONS, OPS, workload
from .cases import CASE_GROUPS, CASES, CASES_BY_NAME, QUICK_CASES, Case, expand_groups


def _csv(choices, what):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def _case_spec(text):
    """``NAME=OP:D0,D1,D2,D3[:key=value,...]`` -> Case (shape as in the case table)."""
    try:
        name, rest = text.split("=", 1)
        op, shape, *params = rest.split(":")
        shape = tuple(int(s) for s in shape.split(","))
        kv = dict(p.split("=", 1) for p in (params[0].split(",") if params and params[0] else []))
        kv = {k: int(v) for k, v in kv.items()}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--add-case must look like NAME=OP:D0,D1,D2,D3[:key=value,...], got {text!r}") from None
    if op not in OPS or len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--add-case needs an op in {OPS} and 4 positive sizes, got {text!r}")
    missing = [k for k in workload(op).required if k not in kv]
    if missing:
        raise argparse.ArgumentTypeError(
            f"--add-case for {op} needs {' and '.join(f'{k}=' for k in missing)}, got {text!r}")
    case = Case(name, op, shape, kv)
    error = workload(op).case_error(case)
    if error:
        raise argparse.ArgumentTypeError(f"--add-case: {error}, in {text!r}")
    return case


def _parser():
    parser = argparse.ArgumentParser(prog="fastlayers", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastlayers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench",
        help="time every kernel x backend on this machine",
        description="Time the case table x direction x backend; print one table (median ms, spread, rate, "
                    "% of this machine's roof, ratio to the fastest other backend). Every backend allocates its "
                    "outputs, as PyTorch does; the +out rows time fastlayers writing into preallocated out= buffers. "
                    "Progress and the time left go to stderr.",
    )
    bench.add_argument("--quick", action="store_true",
                       help=f"a subset that runs in about a minute: {', '.join(QUICK_CASES)}; repeat 5, budget 0.5 s")
    bench.add_argument("--cases", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                       help="case names (default: the case table of fastlayers.cases; 'layers': real networks' "
                            "layers; 'models': a whole CNN through fastlayers.layers, its inference (infer) and "
                            "training step (train); 'all': the table, the sweeps, the layers and the models)")
    bench.add_argument("--add-case", action="append", type=_case_spec, default=[], metavar="NAME=OP:SHAPE[:k=v,...]",
                       help="define an extra case, e.g. mine=conv2d:8,64,32,32:F=64,kernel_size=3,padding=1 "
                            "(rnn shape: T,N,D,H); select it with --cases or it is added to the run")
    bench.add_argument("--ops", type=_csv(OPS, "--ops"), default=list(OPS))
    bench.add_argument("--directions", type=_csv(DIRECTIONS, "--directions"), default=list(DIRECTIONS))
    bench.add_argument("--backends", type=_csv(FAMILIES, "--backends"), default=list(FAMILIES),
                       help="backend families (cpu covers conv2d's im2col, direct and auto); default all, "
                            "unavailable ones are listed as skipped")
    bench.add_argument("--algos", type=_csv(ALGOS, "--algos"),
                       help="the algo= rows of the backends that take one (e.g. auto); default all")
    bench.add_argument("--threads", type=int, help="threads for fastlayers, NumPy's BLAS and PyTorch (default: all CPUs)")
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    bench.add_argument("--repeat", type=int, help="most timed rounds per measurement (default 7, --quick 5)")
    bench.add_argument("--budget", type=float,
                       help="seconds per measurement that cap the rounds (at least one); default 2, --quick 0.5")
    bench.add_argument("--passes", type=int, default=1,
                       help="measure the whole table this many times, fastlayers then each peer in every pass, "
                            "the rounds and the budget shared among the passes (default 1): on a machine whose "
                            "speed drifts over minutes, every backend then meets each phase of it")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--no-out", action="store_true", help="leave out the +out rows (fastlayers into out= buffers)")
    bench.add_argument("--wide", action="store_true",
                       help="print the per-op comparison view: one row per case and direction (and fwd+bwd), "
                            "one column per backend")
    bench.add_argument("--json", metavar="PATH", help="write the full report (machine, roofs, every timing) as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib: pip install fastlayers[bench])")
    bench.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                       help="print per-case ratios of two --json reports instead of running")
    return parser


def _select_cases(args, parser):
    extra = {c.name: c for c in args.add_case}
    by_name = {**CASES_BY_NAME, **extra}
    if args.cases:
        names = expand_groups(args.cases)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            parser.error(f"--cases: unknown case {', '.join(unknown)}; known: {', '.join(by_name)}, "
                         f"{', '.join(CASE_GROUPS)}")
    elif args.quick:
        names = list(QUICK_CASES)
    else:
        names = [c.name for c in CASES]
    names += [n for n in extra if n not in names]
    return [by_name[n] for n in dict.fromkeys(names) if by_name[n].op in args.ops]


def bench(args, parser):
    from . import benchmark

    if args.compare:
        try:
            a, b = (benchmark.load(p) for p in args.compare)
        except (OSError, ValueError) as exc:
            parser.error(f"--compare: {exc}")
        print(benchmark.compare(a, b, *args.compare))
        return 0
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    repeat = args.repeat or (5 if args.quick else 7)
    budget = args.budget or (0.5 if args.quick else 2.0)
    if repeat < 1 or budget <= 0 or args.passes < 1:
        parser.error(f"--repeat and --passes must be >= 1 and --budget > 0, got {repeat}, {args.passes} and {budget}")
    cases = _select_cases(args, parser)
    if not cases:
        parser.error(f"no case left: --cases/--quick selected none of the ops {args.ops}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before the run, not after it)
        except ImportError:
            parser.error("--plot needs matplotlib: pip install fastlayers[bench]")
    report = benchmark.run(cases, args.directions, args.backends, args.dtype, args.threads, repeat, budget, args.seed,
                           out_rows=not args.no_out, algos=args.algos, passes=args.passes)
    print((benchmark.format_wide if args.wide else benchmark.format_table)(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {args.json}")
    if args.plot:
        benchmark.plot(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    return bench(args, parser)


if __name__ == "__main__":
    sys.exit(main())
