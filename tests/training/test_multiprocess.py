"""Two processes on CPU (gloo): ``torchrun --nproc_per_node 2 -m instantstyle train-adapter`` with
``ACCELERATE_USE_CPU=1``; accelerate picks up torchrun's environment exactly as under
``accelerate launch --multi_gpu`` (which itself runs torchrun). Note: ``accelerate launch --cpu
--num_processes 2`` starts ONE process unless given an MPI hostfile, so it cannot be used here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import make_shapes

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_accelerate_launch(tiny_paths, tmp_path):
    data = make_shapes(tmp_path / "shapes", n=6)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "1",
    }
    with socket.socket() as s:  # a free port for the gloo rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "instantstyle",
        "train-adapter",
        "--base",
        str(tiny_paths["base"]),
        "--image-encoder",
        str(tiny_paths["image_encoder"]),
        "--data",
        str(data),
        "--out",
        str(out),
        "--resolution",
        "32",
        "--batch-size",
        "1",
        "--max-steps",
        "2",
        "--checkpoint-every",
        "2",
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = out / "checkpoints" / "checkpoint-0000002"
    assert json.loads((ck / "trainer_state.json").read_text())["num_processes"] == 2
    positions = [json.loads((ck / f"data_state_{r}.json").read_text()) for r in (0, 1)]
    assert positions[0]["offset"] == positions[1]["offset"] == 2  # each rank read its own share
    assert json.loads((out / "data_report.json").read_text())["used"] == 4  # 2 processes x 2 steps x 1
    assert (out / "adapter.safetensors").is_file()
    assert proc.stdout.strip().endswith("adapter.safetensors")
