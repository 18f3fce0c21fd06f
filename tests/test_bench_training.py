"""bench/bench_training.py runs end to end at its smallest (a smoke test: no timing is asserted)."""
import importlib.util
import pathlib
import re

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bench_training.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_training", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_benchmark_prints_both_sides_and_the_breakdown(capsys):
    bench = load_bench()
    assert bench.main(["--models", "digits", "--threads", "1", "--repeat", "2", "--budget", "0.1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"digits 32x1x8x8: fastlayers +[\d.]+ ms", out)
    torch_found = importlib.util.find_spec("torch") is not None
    assert ("fastlayers / PyTorch" in out) == torch_found, out
    shares = [float(s) for s in re.findall(r"ms +([\d.]+)%", out)]
    parts = set(re.findall(r"^ {4}(\S.*?) {2,}[\d.]+ ms", out, flags=re.M))
    assert {"Conv2D forward", "MaxPool2D backward", "Dense backward", "loss, optimiser, rest"} <= parts, parts
    assert sum(shares) == pytest.approx(100, abs=0.5)  # the parts add up to the step


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        load_bench().main(["--models", "resnet"])
    assert "unknown ['resnet']; known: digits, cifar-bn" in capsys.readouterr().err
