"""The benchmark CLI at a tiny size: its table, its JSON, its plot, --compare and its errors.

Timings are never asserted (they are benchmarks); what is checked is that every planned
measurement is reported or skipped with a reason, and that the derived figures follow from the
timings."""
import contextlib
import importlib.util
import io
import json
import re
import statistics

import numpy as np
import pytest

import fastlayers as fl
from fastlayers.__main__ import main
from fastlayers.benchmark import workloads
from fastlayers.benchmark.report import COLUMNS
from fastlayers.cases import ALL_CASES, CASES_BY_NAME, QUICK_CASES, Case

TINY = [
    "--add-case", "tiny-conv=conv2d:2,3,6,6:F=4,kernel_size=3,padding=1",
    "--add-case", "tiny-pool=max_pool2d:2,3,6,6:kernel_size=2",
    "--add-case", "tiny-rnn=rnn:3,2,4,5",
    "--cases", "tiny-conv,tiny-pool,tiny-rnn",
    "--repeat", "2", "--budget", "0.01", "--threads", "1",
]
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run with every backend family, shared by the tests below (PyTorch's worker
    process is the slow part: about two seconds to import torch)."""
    tmp = tmp_path_factory.mktemp("bench")
    json_path, png_path = tmp / "run.json", tmp / "run.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["bench", *TINY, "--json", str(json_path), "--plot", str(png_path)])
    return dict(rc=rc, stdout=out.getvalue(), stderr=err.getvalue(), json=json_path, png=png_path)


def test_table_has_the_columns_and_a_row_per_measurement(tiny_run):
    assert tiny_run["rc"] == 0
    lines = tiny_run["stdout"].splitlines()
    header = next(line for line in lines if line.startswith("case "))
    assert re.split(r"\s{2,}", header.strip()) == list(COLUMNS)
    report = json.loads(tiny_run["json"].read_text())
    rows = [line.split() for line in lines if line.split()[:1] and line.split()[0].startswith("tiny-")]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (r["case"], r["direction"][:3].replace("for", "fwd").replace("bac", "bwd"), r["backend"])
        for r in report["results"]
    ]
    assert "GEMM" in tiny_run["stdout"] and "machine:" in tiny_run["stdout"]
    assert "[1/" in tiny_run["stderr"]  # the progress indicator


def test_json_accounts_for_every_planned_measurement(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    assert report["schema"] == "fastlayers-bench/1"
    assert {"cpu", "usable_cpus", "threads", "blas", "gpus", "versions"} <= report["machine"].keys()
    assert report["machine"]["threads"] == 1
    measured = {(r["case"], r["direction"], r["backend"]) for r in report["results"]}
    skipped = {(s["case"], s["direction"], s["backend"]) for s in report["skipped"]}
    assert not measured & skipped
    families = fl.backends()
    for case in ("tiny-conv", "tiny-pool", "tiny-rnn"):
        op = case.split("-")[1].replace("pool", "max_pool2d").replace("conv", "conv2d")
        for direction in workloads.DIRECTIONS:
            for label in workloads.labels_for(workloads.FAMILIES, op):
                key = (case, direction, label)
                assert key in measured | skipped, f"{key} neither measured nor skipped"
                fam = workloads.family(label)
                if fam != "torch" and workloads.op_name(op, direction) in families[fam]["ops"]:
                    assert key in measured, f"{key} is available here but was not measured"
            assert (case, direction, "numpy") in measured
            assert ((case, direction, "torch") in measured) == HAS_TORCH
    assert all(s["reason"] for s in report["skipped"])


def test_derived_figures_follow_from_the_timings(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    gemm, copy = report["roofs"]["gemm_gflops"], report["roofs"]["copy_gbs"]
    assert gemm > 0 and copy > 0
    for r in report["results"]:
        assert 1 <= r["rounds"] == len(r["times_ms"]) <= 2
        assert r["median_ms"] == pytest.approx(statistics.median(r["times_ms"]))
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["rate"] == pytest.approx(r["work"] / (r["median_ms"] * 1e-3) / 1e9)
        roof = gemm if r["rate_unit"] == "GFLOP/s" else copy
        assert r["roof_pct"] == pytest.approx(100 * r["rate"] / roof)
        others = [o for o in report["results"] if (o["case"], o["direction"]) == (r["case"], r["direction"])
                  and workloads.family(o["backend"]) != workloads.family(r["backend"])]
        if others:
            best = min(others, key=lambda o: o["median_ms"])
            assert r["best_other"] == best["backend"]
            assert r["vs_best_other"] == pytest.approx(best["median_ms"] / r["median_ms"])
        else:
            assert r["vs_best_other"] is None


def test_plot_is_a_png(tiny_run):
    assert tiny_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prints_ratios(tiny_run, tmp_path, capsys):
    report = json.loads(tiny_run["json"].read_text())
    faster = json.loads(json.dumps(report))
    for r in faster["results"]:
        r["median_ms"] /= 2
    b = tmp_path / "faster.json"
    b.write_text(json.dumps(faster))
    assert main(["bench", "--compare", str(tiny_run["json"]), str(b)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny-")]
    matched = [row for row in rows if len(row) == 7 and row[3] in ("float32", "float64")]
    assert len(matched) == len(report["results"])
    assert all(row[-1] == "2.00" for row in matched)
    assert "fastest backend of each run" in out


def test_compare_refuses_a_file_that_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": []}))  # e.g. a pytest-benchmark file
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--compare", str(bad), str(bad)])
    assert exc.value.code == 2
    assert "not a fastlayers bench report" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--cases", "no-such-case"], "unknown case no-such-case"),
    (["--backends", "gpu"], "--backends must be a comma-separated list"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--add-case", "x=conv2d:1,2,3"], "--add-case needs an op"),
    (["--add-case", "x=conv2d:1,2,3,3"], "needs F= and kernel_size="),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_case_table_has_the_sweeps_and_quick_subset():
    resnet = sorted(c.shape[0] for c in ALL_CASES if c.sweep == "resnet-28 batch")
    assert resnet == [1, 4, 16, 32, 64]
    assert all(c.shape[1:] == (128, 28, 28) for c in ALL_CASES if c.sweep == "resnet-28 batch")
    rnn = sorted(c.shape[0] for c in ALL_CASES if c.sweep == "rnn-small length")
    assert rnn == [10, 25, 50, 100]
    assert set(QUICK_CASES) <= set(CASES_BY_NAME)
    assert {CASES_BY_NAME[n].op for n in QUICK_CASES} == set(workloads.OPS)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.op != "max_pool2d"], ids=lambda c: c.name)
def test_flop_counts(case):
    """FLOPs of the table's compute-bound cases, counted independently of the geometry."""
    if case.op == "conv2d":
        N, C, H, W = case.shape
        p = case.params
        k, s, pad = p["kernel_size"], p["stride"], p["padding"]
        OH, OW = (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1
        forward = 2 * N * p["F"] * OH * OW * C * k * k
    else:
        T, N, D, H = case.shape
        forward = T * (2 * N * D * H + 2 * N * H * H)
    assert workloads.work(case, "forward", np.float32) == (forward, "flop")
    assert workloads.work(case, "backward", np.float32) == (2 * forward, "flop")


def test_pool_bytes():
    case = Case("p", "max_pool2d", (2, 3, 8, 8), dict(kernel_size=2, stride=2))
    x, y = 2 * 3 * 8 * 8, 2 * 3 * 4 * 4
    assert workloads.work(case, "forward", np.float64) == (8 * x + 8 * y + 8 * y, "byte")
    assert workloads.work(case, "backward", np.float32) == (4 * x + 4 * y + 8 * y, "byte")


@pytest.mark.parametrize("op", workloads.OPS)
@pytest.mark.parametrize("direction", workloads.DIRECTIONS)
def test_inputs_fit_the_functional_api(op, direction):
    """The benchmark's inputs are valid arguments of the op (the reference accepts them)."""
    shape = (3, 2, 4, 5) if op == "rnn" else (2, 3, 6, 6)
    params = dict(F=4, kernel_size=3, stride=1, padding=1) if op == "conv2d" else dict(kernel_size=2, stride=2)
    case = Case("t", op, shape, params if op != "rnn" else {})
    inputs = workloads.make_inputs(case, direction, np.float64, seed=1)
    fn, sync = workloads.fastlayers_call(case, direction, "numpy", inputs)
    assert sync is None
    result = fn()
    again = workloads.make_inputs(case, direction, np.float64, seed=1)
    assert all(np.array_equal(a, inputs[k]) for k, a in again.items())  # same seed, same inputs
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")
