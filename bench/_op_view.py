"""What the per-op scripts share: their common options and their table, the engine's --wide view."""
from __future__ import annotations

import argparse

from fastlayers.__main__ import main as engine
from fastlayers.cases import cases_named


def parser(doc, repeat):
    """``--threads``, ``--repeat`` and ``--cases``; the caller adds its experiments."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=repeat)
    p.add_argument("--cases", help="comma-separated case names of the op (default: its cases in the table)")
    return p


def parse(p, argv, op, default_cases, experiments):
    """``(args, case names, the arguments left for the engine)``; those are refused with an experiment."""
    args, rest = p.parse_known_args(argv)
    try:
        names = [c.name for c in cases_named(args.cases or ",".join(default_cases), op)]
    except ValueError as exc:
        p.error(str(exc))
    if rest and any(getattr(args, e) for e in experiments):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return args, names, rest


def table(op, names, threads, repeat, rest):
    """The op's comparison table: the engine on its cases, numpy, cpu and PyTorch, --wide."""
    return engine(["bench", "--ops", op, "--backends", "numpy,cpu,torch", "--wide", "--cases", ",".join(names),
                   "--threads", str(threads), "--repeat", str(repeat), *rest])
