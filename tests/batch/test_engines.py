"""Scale-out on the existing engines, on the CPU: a 2-process ``accelerate launch`` (gloo) and a
local Ray with 2 CPU workers each make exactly the manifest's rows, each once, with the
single-process images; each prints its images/s."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import assert_same_images, options, results

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images_per_second(text: str) -> float:
    match = re.search(r"\(([\d.]+) images/s", text)
    assert match, text
    return float(match.group(1))


def _each_row_once(out: Path, baseline_out: Path) -> list[dict]:
    lines = results(out)
    expected = results(baseline_out)
    assert [(line["row"], line["id"]) for line in lines] == [(line["row"], line["id"]) for line in expected]
    assert {line["status"] for line in lines} == {"ok"}
    logged = [
        line
        for part in (out / ".batch" / "results").glob("*.jsonl")
        for line in part.read_text().splitlines()
    ]
    assert len(logged) == 12  # each row made exactly once, by one worker
    return lines


def test_accelerate_launch_two_processes(baseline, batch_dir, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "INSTANTSTYLE_CACHE": str(tmp_path / "cache"),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "instantstyle",
        "batch",
        str(batch_dir / "manifest.jsonl"),
        "--out",
        str(out),
        "--base",
        "tiny",
        "--device",
        "cpu",
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _each_row_once(out, baseline[0])
    assert {line["worker"].split("/")[-1] for line in lines} == {"rank0", "rank1"}  # both ranks worked
    assert_same_images(out, baseline[2])
    assert "12 generated" in proc.stdout and proc.stdout.count("batch: ") == 1  # rank 0 summarises the run
    print(f"\naccelerate launch, 2 CPU processes: {_images_per_second(proc.stdout):.2f} images/s")


@pytest.fixture(scope="module")
def local_ray():
    import ray  # the `batch` extra (README's test set-up and CI install it)

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        },
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow  # over 30 s on 2 busy cores (a Ray start and two actors importing torch); runs in CI
def test_ray_two_cpu_workers(baseline, batch_dir, tmp_path, local_ray):
    from instantstyle.batch import run_batch

    out = tmp_path / "out"
    summary = run_batch(batch_dir / "manifest.jsonl", options(out, engine="ray", workers=2))
    assert (summary.generated, summary.failed) == (12, 0)
    lines = _each_row_once(out, baseline[0])
    assert len({line["worker"] for line in lines}) == 2  # two actors, each with its model
    assert_same_images(out, baseline[2])
    print(f"\nRay, 2 CPU workers: {summary.images_per_second:.2f} images/s")
