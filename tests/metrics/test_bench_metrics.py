"""The scoring-cost benchmark's --tiny mode runs and reports every metric model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_bench_metrics_tiny(tmp_path, capsys, tiny_metric_paths):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_metrics.py"
    spec = importlib.util.spec_from_file_location("bench_metrics", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--images", "2", "--json", str(tmp_path / "m.json")]) == 0
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["csd", "clip", "dino"] and all(r["images_per_s"] > 0 for r in rows)
    assert "| csd | csd_style, csd_content |" in capsys.readouterr().out
