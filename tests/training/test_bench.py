"""The training benchmark's --tiny mode runs on CPU and reports both modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| style |" in stdout and "| all |" in stdout and "the throughput" in stdout
    style, full = json.loads(out.read_text())["results"]
    assert style["trained_layers"] < full["trained_layers"]
    assert style["trainable_params_M"] < full["trainable_params_M"]
    assert style["optimizer_state_GiB"] < full["optimizer_state_GiB"]
    assert style["images_per_s"] > 0 and full["images_per_s"] > 0
