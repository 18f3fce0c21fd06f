"""bench/bench_overhead.py runs end to end at its smallest (a smoke test: no timing is asserted)."""
import importlib.util
import pathlib
import re

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bench_overhead.py"


def test_overhead_benchmark_prints_every_row(capsys):
    spec = importlib.util.spec_from_file_location("bench_overhead", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--threads", "1", "--calls", "3", "--rounds", "1"]) == 0
    rows = re.findall(r"^  (\S.*?) +([\d.]+) us$", capsys.readouterr().out, flags=re.M)
    assert [name for name, _ in rows] == [
        "relu kernel alone", "fl.relu", "fl.max_pool2d", "fl.conv2d",
        "ReLU eval forward", "MaxPool2D eval forward", "Conv2D eval forward",
        "ReLU train forward+backward", "MaxPool2D train forward+backward", "Conv2D train forward+backward"]
    assert all(float(t) > 0 for _, t in rows)
