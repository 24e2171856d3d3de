"""The cost benchmark's --tiny mode runs and reports every method."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_bench_methods_tiny(tmp_path, capsys, monkeypatch, tiny_model):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_methods.py"
    spec = importlib.util.spec_from_file_location("bench_methods", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        bench, "load_tiny", lambda: tiny_model
    )  # the session's tiny model: same code path, no rebuild
    assert (
        bench.main(["--tiny", "--steps", "1", "--train-steps", "2", "--json", str(tmp_path / "c.json")]) == 0
    )
    report = json.loads((tmp_path / "c.json").read_text())
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == list(bench.METHODS)
    assert rows["instantstyle"]["x_sdxl_passes"] == 1.0  # one CFG pass of batch 2 per step
    assert rows["visual-style-prompting"]["x_sdxl_passes"] == 2.0  # reference row in the batch
    assert rows["style-aligned"]["x_sdxl_passes"] == 3.0  # + the DDIM inversion (CFG 2)
    assert report["b_lora_training"]["extrapolated_1000_steps_s"] > 0
    assert "| style-aligned |" in capsys.readouterr().out
