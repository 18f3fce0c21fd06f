"""The benchmark engine and its CLI at a tiny size: the table, the JSON, the plot, --compare, the
errors, and the engine's honesty.

Timings are never asserted (they are benchmarks); what is checked is that every planned
measurement is reported or skipped with a reason, that the derived figures follow from the
timings, that every backend allocates unless a row says +out, that PyTorch's worker timed the
same inputs as the engine, and that a noisy timer is flagged."""
import contextlib
import importlib.util
import io
import json
import platform
import re
import statistics
import sys

import numpy as np
import pytest

import fastlayers as fl
from fastlayers.__main__ import _case_spec, main
from fastlayers.benchmark import report as report_module, runner, timing, workloads
from fastlayers.benchmark.report import COLUMNS, format_table
from fastlayers.benchmark import format_wide as benchmark_format_wide
from fastlayers.ops._workload import SWAPPED_FAMILY
from fastlayers.cases import ALL_CASES, CASES_BY_NAME, LAYER_CASES, QUICK_CASES, Case, cases_named, expand_groups

TINY = [
    "--add-case", "tiny-conv=conv2d:2,3,6,6:F=4,kernel_size=3,padding=1",
    "--add-case", "tiny-pool=max_pool2d:2,3,6,6:kernel_size=2",
    "--add-case", "tiny-rnn=rnn:3,2,4,5",
    "--cases", "tiny-conv,tiny-pool,tiny-rnn",
    "--repeat", "2", "--budget", "0.01", "--threads", "1",
]
TINY_CASES = {c.name: c for c in map(_case_spec, TINY[1:6:2])}
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
    assert re.search(r"^\[1/\d+\] tiny-conv forward numpy \(\d+ left\)$", tiny_run["stderr"], re.M)
    assert re.search(r"^\[2/\d+\] .* \(\d+ left, about \d+ s left\)$", tiny_run["stderr"], re.M)
    total = int(re.search(r"fastlayers bench: (\d+) measurements", tiny_run["stderr"]).group(1))
    assert total == len(report["results"])  # every measurement planned ran, the other processes' included
    assert f"[{total}/{total}]" in tiny_run["stderr"]  # the last one, PyTorch's or an inference engine's


def test_json_accounts_for_every_planned_measurement(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    assert report["schema"] == runner.SCHEMA
    assert {"cpu", "usable_cpus", "threads", "blas", "gpus", "versions"} <= report["machine"].keys()
    assert report["machine"]["threads"] == 1
    measured = {(r["case"], r["direction"], r["backend"]) for r in report["results"]}
    skipped = {(s["case"], s["direction"], s["backend"]) for s in report["skipped"]}
    assert not measured & skipped
    families = runner.available_families()  # {family: (available, reason, ops or None)}
    for case in ("tiny-conv", "tiny-pool", "tiny-rnn"):
        op = case.split("-")[1].replace("pool", "max_pool2d").replace("conv", "conv2d")
        for direction in workloads.DIRECTIONS:
            for label in runner.labels_for(runner.FAMILIES, op):
                key = (case, direction, label)
                assert key in measured | skipped, f"{key} neither measured nor skipped"
                fam = runner.family(label)
                available, _, ops = families[fam]
                if fam == SWAPPED_FAMILY:  # PyTorch's modules swapped: the model cases only
                    assert key in skipped, f"{key}: an op case has no torch.nn module to swap"
                elif available and (ops is None or workloads.op_name(op, direction) in ops):
                    assert key in measured, f"{key} is available here but was not measured"
            assert (case, direction, "numpy") in measured
            assert ((case, direction, "torch") in measured) == HAS_TORCH
    assert all(s["reason"] for s in report["skipped"])


def test_algos_selects_the_algorithm_rows():
    """``--algos auto``: one algorithm row per family that takes algo= (and its +out twin); the
    ops without algo= are untouched."""
    assert runner.labels_for(("cpu", "torch"), "conv2d", algos=["auto"]) == ["cpu:auto", "cpu:auto+out", "torch"]
    assert runner.labels_for(("cpu",), "rnn", algos=["auto"]) == runner.labels_for(("cpu",), "rnn")
    report = runner.run([TINY_CASES["tiny-conv"]], ["forward"], ["cpu"], repeat=1, budget_s=0.01, threads=1,
                        out_rows=False, progress=io.StringIO(), algos=["im2col"])
    assert [r["backend"] for r in report["results"]] == ["cpu:im2col"]
    with pytest.raises(SystemExit):
        main(["bench", "--algos", "fastest"])


def test_derived_figures_follow_from_the_timings(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    gemm, copy = report["roofs"]["gemm_gflops"], report["roofs"]["copy_gbs"]
    assert gemm > 0 and copy > 0
    for r in report["results"]:
        assert 1 <= r["rounds"] == len(r["times_ms"]) <= 2
        assert r["median_ms"] == pytest.approx(statistics.median(r["times_ms"]))
        assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
        assert r["spread"] == pytest.approx((r["q3_ms"] - r["q1_ms"]) / r["median_ms"])
        assert r["rate"] == pytest.approx(r["work"] / (r["median_ms"] * 1e-3) / 1e9)
        roof = gemm if r["rate_unit"] == "GFLOP/s" else copy
        assert r["roof_pct"] == pytest.approx(100 * r["rate"] / roof)
        others = [o for o in report["results"] if (o["case"], o["direction"]) == (r["case"], r["direction"])
                  and runner.family(o["backend"]) != runner.family(r["backend"]) and o["allocates"]]
        if others:
            best = min(others, key=lambda o: o["median_ms"])
            assert r["best_other"] == best["backend"]
            assert r["vs_best_other"] == pytest.approx(best["median_ms"] / r["median_ms"])
        else:
            assert r["vs_best_other"] is None


def test_every_backend_allocates_unless_the_row_says_out(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    assert {r["allocates"] for r in report["results"]} == {True, False}
    assert all(r["allocates"] == ("+out" not in r["backend"]) for r in report["results"])
    labels = {r["backend"] for r in report["results"]}
    assert {"cpu", "cpu+out", "cpu:auto", "cpu:auto+out"} <= labels


@pytest.mark.parametrize("op", workloads.OPS)
@pytest.mark.parametrize("direction", workloads.DIRECTIONS)
def test_allocating_calls_return_new_outputs_and_out_calls_reuse_theirs(op, direction):
    case = _tiny_case(op)
    inputs = workloads.make_inputs(case, direction, np.float32, seed=0)
    label = "cpu:auto" if workloads.workload(op).algos else "cpu"
    fresh, _ = runner.fastlayers_call(case, direction, label, inputs)
    first, second = _arrays(fresh()), _arrays(fresh())
    assert not any(np.shares_memory(a, b) for a, b in zip(first, second))
    if not workloads.workload(op).takes_out:  # a model: its rows all allocate
        assert not [label for label in runner.labels_for(["cpu"], op) if label.endswith(runner.OUT)]
        return
    into, _ = runner.fastlayers_call(case, direction, label + "+out", inputs)
    first, second = _arrays(into()), _arrays(into())
    assert all(np.shares_memory(a, b) for a, b in zip(first, second))
    for got, want in zip(first, _arrays(fresh())):
        np.testing.assert_array_equal(got, want)  # the same call, only the buffers differ


def _arrays(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_torch_worker_timed_the_engines_inputs(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    digests = {}
    for r in report["results"]:
        digests.setdefault((r["case"], r["direction"]), set()).add(r["inputs_sha256"])
    assert all(len(d) == 1 for d in digests.values()), "backends of one case were timed on different inputs"
    for (case, direction), (digest,) in digests.items():
        inputs = workloads.make_inputs(TINY_CASES[case], direction, np.float32, seed=0)
        assert digest == runner.inputs_digest(inputs)
    assert report["settings"]["torch"]["threads"] == 1
    assert report["settings"]["torch"]["allocator"] == report["settings"]["allocator"]


def test_a_torch_timing_on_other_inputs_is_refused(monkeypatch):
    def worker_with_other_inputs(module, job, threads, progress):
        results = [dict(times_s=[1e-3], inputs_sha256="0" * 64) for _ in job["items"]]
        return dict(torch_version="x", threads=threads, device="cpu", allocator={}, results=results), None

    found = dict(runner.available_families(), torch=(True, "a stand-in worker", None))  # installed or not
    monkeypatch.setattr(runner, "available_families", lambda: found)
    monkeypatch.setattr(runner, "_run_worker", worker_with_other_inputs)
    report = runner.run([_tiny_case("rnn")], families=("numpy", "torch"), threads=1, repeat=1, budget_s=0.01,
                        progress=io.StringIO())
    assert {r["backend"] for r in report["results"]} == {"numpy"}
    refused = [s for s in report["skipped"] if s["backend"] == "torch"]
    assert len(refused) == 2 and all("other inputs" in s["reason"] for s in refused)


def test_passes_measure_every_family_in_turn_and_keep_all_their_rounds(monkeypatch):
    """--passes 3: fastlayers' rows, then the peer's, three times; each pass with its share of the
    rounds (repeat 5: 2 a pass) and the budget, a row's rounds those of every pass; a peer that
    fails in a later pass loses its row (no row of some passes only)."""
    jobs, order = [], []

    def worker(module, job, threads, progress):
        jobs.append(job)
        order.append("torch")
        if len(jobs) == 3 and fail_last:
            return None, "the torch worker failed"
        digest = runner.inputs_digest(workloads.make_inputs(_tiny_case("rnn"), job["items"][0]["direction"],
                                                            np.float32, 0))
        results = [dict(times_s=[1e-3] * job["repeat"], inputs_sha256=digest) for _ in job["items"]]
        return dict(torch_version="x", threads=threads, device="cpu", allocator={}, results=results), None

    found = dict(runner.available_families(), torch=(True, "a stand-in worker", None))
    monkeypatch.setattr(runner, "available_families", lambda: found)
    monkeypatch.setattr(runner, "_run_worker", worker)
    timed = runner.time_call
    monkeypatch.setattr(runner, "time_call", lambda *a, **k: order.append("numpy") or timed(*a, **k))
    for fail_last in (False, True):
        jobs.clear(), order.clear()
        report = runner.run([_tiny_case("rnn")], ["forward"], families=("numpy", "torch"), threads=1, repeat=5,
                            budget_s=0.3, progress=io.StringIO(), passes=3)
        assert order == ["numpy", "torch"] * 3
        assert [(j["repeat"], j["budget_s"]) for j in jobs] == [(2, pytest.approx(0.1))] * 3
        rows = {r["backend"]: r for r in report["results"]}
        assert rows["numpy"]["rounds"] == 6
        if fail_last:
            assert "torch" not in rows and [s["backend"] for s in report["skipped"]] == ["torch"]
        else:
            assert rows["torch"]["rounds"] == 6


def test_inputs_digest_tells_different_inputs_apart():
    case = _tiny_case("conv2d")
    a = workloads.make_inputs(case, "forward", np.float32, seed=0)
    assert runner.inputs_digest(a) == runner.inputs_digest(workloads.make_inputs(case, "forward", np.float32, seed=0))
    assert runner.inputs_digest(a) != runner.inputs_digest(workloads.make_inputs(case, "forward", np.float32, seed=1))
    assert runner.inputs_digest(a) != runner.inputs_digest(workloads.make_inputs(case, "forward", np.float64, seed=0))


class FakeClock:
    """A clock under which the timed calls take the given durations in turn (seconds)."""

    def __init__(self, durations):
        self.durations, self.now, self.calls = durations, 0.0, 0

    def __call__(self):
        if self.calls % 2:  # the end of a timed call
            self.now += self.durations[(self.calls // 2) % len(self.durations)]
        self.calls += 1
        return self.now


@pytest.mark.parametrize("durations, repeat, unstable", [
    ([10e-3], 7, False),
    ([10e-3, 10.2e-3, 9.9e-3], 7, False),
    ([10e-3, 20e-3], 7, True),
    ([10e-3, 10e-3, 50e-3], 7, True),  # any 7 rounds in a row hold 2 or 3 outliers
    ([10e-3, 20e-3], 2, None),  # too few rounds to tell
])
def test_a_noisy_timer_is_flagged_unstable(durations, repeat, unstable):
    # calls over timing.MIN_ROUND_S: a round is one call, so the rounds are the durations
    report = runner.run([_tiny_case("rnn")], families=("numpy", "cpu"), threads=1, repeat=repeat, budget_s=10.0,
                        out_rows=False, progress=io.StringIO(), clock=FakeClock(durations))
    assert len(report["results"]) == 4
    for r in report["results"]:
        assert r["rounds"] == repeat
        assert r["unstable"] is unstable
    table = format_table(report)
    rows = [line for line in table.splitlines() if line.startswith("t ")]  # spread: the 8th word
    assert len(rows) == 4
    assert all(("!" in row.split()[7]) == bool(unstable) and ("?" in row.split()[7]) == (unstable is None)
               for row in rows)
    assert ("measurements unstable" in table) == bool(unstable)


@pytest.mark.parametrize("coretype, isa, architecture, warns", [
    ("Haswell", "x86-64-v4", "Haswell", True),  # AVX2 kernels forced on an AVX-512 CPU
    (None, "x86-64-v4", "Haswell", False),  # OpenBLAS's own choice
    ("Haswell", "x86-64-v3", "Haswell", False),  # the kernels the CPU runs anyway
    ("SkylakeX", "x86-64-v4", "SkylakeX", False),
])
def test_a_forced_older_blas_core_is_warned_of(coretype, isa, architecture, warns):
    machine = dict(load_average=0.0, usable_cpus=2, openblas_coretype=coretype, kernel_isa=isa,
                   blas=[dict(internal_api="openblas", architecture=architecture)])
    lines = report_module._blas_core_warning(machine)
    assert len(lines) == warns
    if warns:
        assert "OPENBLAS_CORETYPE=Haswell" in lines[0] and "Haswell kernels" in lines[0]


def test_the_machine_record_names_the_blas_core_setting(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    machine = timing.machine_info(1)
    assert machine["openblas_coretype"] == "Zen"
    assert machine["kernel_isa"] in ("x86-64-v4", "x86-64-v3", "baseline")


def test_spread_of_known_rounds():
    s = timing.spread([4.0, 1.0, 2.0, 3.0, 5.0])
    assert (s["min"], s["q1"], s["median"], s["q3"], s["max"]) == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert s["relative"] == pytest.approx(2 / 3) and s["unstable"] is True
    one = timing.spread([2.0])
    assert (one["q1"], one["q3"], one["relative"], one["unstable"]) == (2.0, 2.0, 0.0, None)


def test_the_allocator_is_fixed_in_every_process(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    allocator = report["settings"]["allocator"]
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert allocator == dict(fixed=True, mmap_threshold=32 << 20, trim_threshold=64 << 20)
    else:
        assert allocator["fixed"] is False and allocator["reason"]
    assert "allocator:" in tiny_run["stdout"]


def test_wide_view_has_a_table_per_op_a_column_per_backend_and_the_sums(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    lines = benchmark_format_wide(report).splitlines()
    for op in ("conv2d", "max_pool2d", "rnn"):
        at = lines.index(f"{op}:")
        header = re.split(r"\s{2,}", lines[at + 1].strip())
        labels = list(dict.fromkeys(r["backend"] for r in report["results"] if r["op"] == op))
        assert sorted(header[2:-2]) == sorted(f"{b} ms" for b in labels)
        rows = [line.split() for line in lines[at + 2:at + 5]]
        case = rows[0][0]
        assert [r[1] for r in rows] == ["fwd", "bwd", "fwd+bwd"] and {r[0] for r in rows} == {case}
        column = header.index("numpy ms")
        by = {r["direction"]: r["median_ms"] for r in report["results"] if (r["case"], r["backend"]) == (case, "numpy")}
        assert float(rows[2][column].rstrip("!")) == pytest.approx(by["forward"] + by["backward"], rel=0.01)


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
    (["--add-case", "x=conv2d:1,2,3,3:F=2"], "for conv2d needs kernel_size=,"),
    (["--add-case", "x=max_pool2d:1,2,4,4"], "for max_pool2d needs kernel_size=,"),
    (["--add-case", "x=vgg:1,3,4,32"], "the vgg model needs images of at least 8x8, got 4x32"),
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
    layers = [c.name for c in LAYER_CASES]
    assert expand_groups(["cifar-stem", "layers", "vgg-conv1"]) == ["cifar-stem"] + layers
    assert [c.name for c in cases_named("layers", "conv2d")] == layers
    with pytest.raises(ValueError, match="none given"):
        cases_named("layers", "max_pool2d")  # the group holds no pools


# Groups and dilation, which the design cases lack and the real-network layers have.
GROUPED_CONV = Case("t-grouped", "conv2d", (2, 4, 7, 7), dict(F=6, kernel_size=3, padding=2, dilation=2, groups=2))


@pytest.mark.parametrize("direction", workloads.DIRECTIONS)
def test_conv_workload_carries_groups_and_dilation(direction):
    """The workload's call and its PyTorch call are the grouped, dilated convolution."""
    inputs = workloads.make_inputs(GROUPED_CONV, direction, np.float64, seed=3)
    assert inputs["weight"].shape == (6, 2, 3, 3)
    ours = _arrays(runner.fastlayers_call(GROUPED_CONV, direction, "numpy", inputs)[0]())
    kw = dict(padding=2, dilation=2, groups=2)
    if direction == "forward":
        want = [fl.reference.conv2d(inputs["input"], inputs["weight"], inputs["bias"], **kw)]
    else:
        want = fl.reference.conv2d_backward(inputs["grad_output"], inputs["input"], inputs["weight"], **kw)
    for o, w in zip(ours, want, strict=True):
        np.testing.assert_array_equal(o, w)
    if HAS_TORCH:
        import torch

        theirs = workloads.workload("conv2d").torch_call(torch, GROUPED_CONV, direction, inputs, seed=3)()
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for t, w in zip(theirs, want, strict=True):
            np.testing.assert_allclose(t.detach().numpy(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.op not in ("max_pool2d", "vgg")], ids=lambda c: c.name)
def test_flop_counts(case):
    """FLOPs of the table's compute-bound op cases, counted independently of the geometry (the
    models: test_model_flops)."""
    if case.op == "conv2d":
        N, C, H, W = case.shape
        p = case.params
        k, s, pad, d = p["kernel_size"], p.get("stride", 1), p.get("padding", 0), p.get("dilation", 1)
        span = d * (k - 1) + 1
        OH, OW = (H + 2 * pad - span) // s + 1, (W + 2 * pad - span) // s + 1
        forward = 2 * N * p["F"] * OH * OW * (C // p.get("groups", 1)) * k * k
    else:  # the recurrent ops: both products of a step, as wide as the cell's gates
        T, N, D, H = case.shape
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[case.op]
        forward = T * (2 * N * D * H + 2 * N * H * H) * gates
    assert workloads.work(case, "forward", np.float32) == (forward, "flop")
    assert workloads.work(case, "backward", np.float32) == (2 * forward, "flop")


def test_pool_bytes():
    case = Case("p", "max_pool2d", (2, 3, 8, 8), dict(kernel_size=2, stride=2))
    x, y = 2 * 3 * 8 * 8, 2 * 3 * 4 * 4
    assert workloads.work(case, "forward", np.float64) == (8 * x + 8 * y, "byte")  # the maxima only
    assert workloads.work(case, "backward", np.float32) == (4 * x + 4 * y + 8 * y, "byte")


@pytest.mark.parametrize("op", workloads.OPS)
@pytest.mark.parametrize("direction", workloads.DIRECTIONS)
def test_inputs_fit_the_functional_api(op, direction):
    """The benchmark's inputs are valid arguments of the op (the reference accepts them)."""
    case, inputs, fn = _tiny_reference_call(op, direction, seed=1)
    result = fn()
    again = workloads.make_inputs(case, direction, np.float64, seed=1)
    assert all(np.array_equal(a, inputs[k]) for k, a in again.items())  # same seed, same inputs
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")


# A tiny case of every op (a new op without one fails here, by KeyError): (shape, params).
TINY_SHAPES = {
    "conv2d": ((2, 3, 6, 6), dict(F=4, kernel_size=3, stride=1, padding=1)),
    "max_pool2d": ((2, 3, 6, 6), dict(kernel_size=2, stride=2)),
    "rnn": ((3, 2, 4, 5), {}),
    "lstm": ((3, 2, 4, 5), {}),
    "gru": ((3, 2, 4, 5), {}),
    "vgg": ((2, 3, 8, 8), {}),
}


def _tiny_case(op):
    shape, params = TINY_SHAPES[op]
    return Case("t", op, shape, params)


def _tiny_reference_call(op, direction, seed):
    """The tiny case of ``op``, its float64 inputs made with ``seed`` and the engine's call of
    the reference on them."""
    case = _tiny_case(op)
    inputs = workloads.make_inputs(case, direction, np.float64, seed=seed)
    fn, sync = runner.fastlayers_call(case, direction, "numpy", inputs)
    assert sync is None  # the host waits for nothing
    return case, inputs, fn


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("op", workloads.OPS)
@pytest.mark.parametrize("direction", workloads.DIRECTIONS)
def test_torch_call_computes_what_fastlayers_computes(op, direction):
    """The PyTorch equivalent of each workload gives the reference's outputs (float64)."""
    import torch

    case, inputs, ours = _tiny_reference_call(op, direction, seed=2)
    theirs = workloads.workload(op).torch_call(torch, case, direction, inputs, seed=2)()
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    got = [t.detach().numpy() for t in theirs if torch.is_tensor(t) and t.is_floating_point()]
    want = [o for o in _arrays(ours()) if o.dtype.kind == "f"]
    if op == "rnn" and direction == "forward":
        got = got[:1]  # torch.nn.RNN also returns the last state
    if op == "rnn" and direction == "backward":
        got[2], got[3] = got[2].T, got[3].T  # PyTorch keeps the weights as (H, D) and (H, H)
    if op in ("lstm", "gru") and direction == "forward":  # torch: (hs, final states); lstm: ours (hs, cs)
        final = theirs[1][-1] if op == "lstm" else theirs[1]
        np.testing.assert_allclose(final[0].detach().numpy(), want[-1][-1], rtol=1e-10, atol=1e-12)
        got, want = got[:1], want[:1]
    if op in ("lstm", "gru") and direction == "backward":
        w = 1 + (op == "lstm") + 1  # dx, dh0 (and dc0), then the weights, which PyTorch keeps transposed
        got[w], got[w + 1] = got[w].T, got[w + 1].T
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # float64 on both sides; the orders of summation differ only.
        np.testing.assert_allclose(g.reshape(w.shape), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", ["tiny-conv", "tiny-pool", "t-grouped", "t-vgg"])
def test_inference_engines_time_the_same_forward(engine, case):
    """The ONNX model an engine times (one node for an op, the network for a model) computes
    what fastlayers' forward computes."""
    pytest.importorskip("onnx")
    pytest.importorskip(engine)
    from fastlayers.benchmark.onnx_worker import engine_call

    case = {**TINY_CASES, GROUPED_CONV.name: GROUPED_CONV, "t-vgg": _tiny_case("vgg")}[case]
    inputs = workloads.make_inputs(case, "forward", np.float32, seed=0)
    fn, version = engine_call(engine, case, inputs, threads=1)
    got = np.asarray(list(fn().values())[0] if engine == "openvino" else fn()[0])
    ours = runner.fastlayers_call(case, "forward", "cpu", inputs)[0]()
    want = ours[0] if isinstance(ours, tuple) else ours  # the pool's maxima (its indices aside)
    assert version
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("one_call, repeat, budget_s, warmups, calls, rounds", [
    (1e-4, 7, 2.0, 500, 20, 7),  # fast: 50 ms of warm-up, rounds of 2 ms
    (2e-3, 7, 2.0, 25, 1, 7),  # a call of 2 ms is a round of its own
    (1.0, 7, 2.0, 1, 1, 2),  # slow: one warm-up call, the rounds cut to the budget
    (1e-4, 3, 1e-3, 500, 20, 1),  # a budget under one round still gets one
])
def test_rounds_of_fast_calls_make_several_calls_after_a_warm_up(one_call, repeat, budget_s, warmups, calls, rounds):
    made = []
    clock = FakeClock([one_call])  # every timed block takes one_call seconds, whatever it calls
    times = timing.time_call(lambda: made.append(1), repeat, budget_s, clock=clock)
    assert len(made) == warmups + calls * rounds
    assert times == pytest.approx([one_call / calls] * rounds)


# ---------------------------------------------------------------------------- model cases


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("family", ["numpy", "cpu"])
def test_model_training_steps_follow_torch(family):
    """Three training steps of the model case on each side, float64, from the same inputs: the
    losses agree step by step, so the updates (SGD with momentum) did too; the step's own loss
    only from the second step on depends on them."""
    import torch

    case = _tiny_case("vgg")
    inputs = workloads.make_inputs(case, "backward", np.float64, seed=4)
    ours = runner.fastlayers_call(case, "backward", family, inputs)[0]
    theirs = workloads.workload("vgg").torch_call(torch, case, "backward", inputs, seed=4)
    losses = [(float(ours()), float(theirs())) for _ in range(3)]
    assert losses[0][0] != losses[2][0]  # the steps moved the weights
    for got, want in losses:
        assert got == pytest.approx(want, rel=1e-10)  # float64, orders of summation aside


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_model_through_fastlayers_torch_follows_torch(direction, monkeypatch):
    """The fastlayers.torch rows: PyTorch's program with the model's Conv2d and MaxPool2d swapped
    for fastlayers.torch's (so its kernels run them), agreeing with PyTorch's own step by step
    (float64: three inferences, or three training steps whose updates move the weights)."""
    import torch
    import fastlayers.torch as flt

    called = []
    for name in ("conv2d", "relu_max_pool2d"):  # convert(fuse=True): each ReLU -> pool pair one call
        op = getattr(flt.functional, name)
        monkeypatch.setattr(flt.functional, name,
                            lambda *a, _op=op, _name=name, **k: called.append(_name) or _op(*a, **k))
    case = _tiny_case("vgg")
    inputs = workloads.make_inputs(case, direction, np.float64, seed=4)
    vgg = workloads.workload("vgg")
    swapped, theirs = (vgg.torch_call(torch, case, direction, inputs, seed=4, swap=s) for s in (True, False))
    results = []
    for _ in range(3):
        got = swapped()
        assert called == ["conv2d", "relu_max_pool2d"] * 3  # each of the 3 stages on fastlayers' kernels
        del called[:]
        results.append((got, theirs()))
        assert not called
    for got, want in results:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if direction == "backward":
        assert results[0][0] != results[2][0]  # the steps moved the weights


def test_model_runs_where_its_layers_do():
    """Which families time a model case, and why not the others."""
    vgg, case = workloads.workload("vgg"), _tiny_case("vgg")
    cpu_ops = set(fl.available_backends()["cpu"]["ops"])
    assert vgg.unavailable(case, "backward", "cpu", cpu_ops) is None
    assert vgg.unavailable(case, "forward", "torch", None) is None
    assert vgg.unavailable(case, "backward", SWAPPED_FAMILY, None) is None
    conv = workloads.workload("conv2d")
    assert "model cases" in conv.unavailable(TINY_CASES["tiny-conv"], "forward", SWAPPED_FAMILY, None)
    assert vgg.unavailable(case, "forward", "onnxruntime", {"conv2d", "vgg"}) is None
    assert vgg.unavailable(case, "backward", "onnxruntime", {"conv2d", "vgg"}) == "onnxruntime runs inference only"
    assert "host backends" in vgg.unavailable(case, "forward", "cuda", cpu_ops)
    assert vgg.unavailable(case, "forward", "cpu", cpu_ops - {"relu"}) == "the cpu backend has no relu"
    labels = runner.labels_for(runner.FAMILIES, "vgg")
    assert not [label for label in labels if label.endswith(runner.OUT)]  # a model takes no out=


def test_model_flops():
    """The convolutions' and the Dense layer's multiply-adds, by hand for the tiny case."""
    case = _tiny_case("vgg")  # (2, 3, 8, 8): planes 8, 4, 2; features 128 * 1 * 1
    convs = [2 * 2 * 32 * 64 * 3 * 9, 2 * 2 * 64 * 16 * 32 * 9, 2 * 2 * 128 * 4 * 64 * 9]
    forward = sum(convs) + 2 * 2 * 128 * 10
    assert workloads.work(case, "forward", "float32") == (forward, "flop")
    assert workloads.work(case, "backward", "float32") == (3 * forward - convs[0], "flop")


def test_model_rows_are_named_infer_and_train(tiny_run):
    report = json.loads(tiny_run["json"].read_text())
    out = format_table(dict(report, results=[dict(r, case="m", op="vgg") for r in report["results"][:2]]))
    assert re.search(r"^m +infer ", out, flags=re.M) and "train = one training step" in out
