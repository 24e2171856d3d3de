"""The training benchmark's --tiny mode runs on CPU and reports both modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| style |" in proc.stdout and "| all |" in proc.stdout
    res = json.loads(out.read_text())["results"]
    style, full = res
    assert style["trained_layers"] < full["trained_layers"]
    assert style["trainable_params_M"] < full["trainable_params_M"]
    assert style["optimizer_state_GiB"] < full["optimizer_state_GiB"]
    assert all(r["images_per_s"] > 0 for r in res)
