"""The stylize benchmark's --tiny mode runs on the CPU and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_bench_stylize_tiny(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_stylize.py"
    spec = importlib.util.spec_from_file_location("bench_stylize", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--modes", "plus,plus-low", "--json", str(out)]) == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["plus"]["s_per_image"] > 0 and rows["plus"]["size"] == [
        80,
        80,
    ]  # Plus sizing: long side 5/4 of native
    assert "skipped" in rows["plus-low"]
