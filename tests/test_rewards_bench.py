"""The reward benchmark runs and reports clips/s (its speed is measured there, not asserted)."""

import runpy
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "bench_rewards.py"


def test_benchmark_reports_throughput(capsys):
    main = runpy.run_path(str(BENCHMARK))["main"]
    assert main(["--batch", "4", "--repeats", "1"]) > 0
    assert "clips/s" in capsys.readouterr().out
