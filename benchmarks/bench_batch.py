"""Throughput of ``instantstyle batch``: images/s for 1 and N workers, and the batch machinery's
overhead against a plain ``generate`` loop in the same process.

What it does, in order:
1. Writes a manifest of ``--rows`` rows (2 styles x 2 prompts x seeds) with its style images.
2. Loads the model once: ``--tiny`` the tiny test model on the CPU (fp32, one thread per worker);
   otherwise full-size SDXL with random weights on the GPU (fp16, 1024 px; nothing is downloaded,
   the cost is the real model's: ``instantstyle.testing.fullsize``).
3. After one warm-up call, in this process: a plain loop (``model.generate`` + ``save_png`` per
   row), then ``batch`` on the same model with ``--batch-size 1`` and ``--batch-size B``. The
   overhead is batch's seconds per image against the loop's.
4. ``--tiny`` only: ``--workers`` N processes under ``torchrun`` (what ``accelerate launch`` runs),
   ``instantstyle batch ... --base tiny``; images/s over the generation (model loads excluded,
   from the run's summary). A GPU machine with several GPUs: the same with one process per GPU
   needs the real weights (``--base``), since the random model exists only in memory: run
   ``accelerate launch -m instantstyle batch`` yourself there.
Prints a Markdown table; ``--json`` writes the rows too.

Examples:
    python benchmarks/bench_batch.py --tiny --rows 24 --workers 2     # CPU, about a minute
    python benchmarks/bench_batch.py --rows 16 --steps 30             # one GPU, full-size random SDXL
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout


def write_manifest(directory: Path, rows: int, steps: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    a = np.zeros((size // 4, size // 4, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, size // 4, dtype=np.uint8)[None, :]
    Image.fromarray(a).save(directory / "warm.png")
    Image.fromarray(a[..., ::-1].copy()).save(directory / "cool.png")
    lines = []
    for i in range(rows):
        style = ["warm.png", "cool.png"][i % 2]
        prompt = ["a lighthouse at dusk", "a cat reading a book"][(i // 2) % 2]
        lines.append(
            {"prompt": prompt, "style": [style], "seed": i, "steps": steps, "width": size, "height": size}
        )
    path = directory / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def load_model(tiny: bool, speed: str):
    if tiny:
        from instantstyle import InstantStyle

        return InstantStyle.from_pretrained(
            "tiny", device="cpu", dtype="fp32", cache_dir=None, progress=False
        )
    import torch

    from instantstyle.testing.fullsize import full_instantstyle

    return full_instantstyle("cuda", torch.float16, speed=speed)[0]


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(model, manifest: Path, out: Path) -> tuple[int, float]:
    """A user's loop: one request per row, ``generate`` then ``save_png``."""
    from instantstyle import GenerateRequest, save_png

    out.mkdir()
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    start = time.perf_counter()
    n = 0
    for i, row in enumerate(rows):
        row["style"] = [str(manifest.parent / s) for s in row["style"]]
        for j, image in enumerate(model.generate(GenerateRequest(**row))):
            save_png(image, out / f"{i}-{j}.png")
            n += 1
    sync()
    return n, time.perf_counter() - start


def batch_run(model, manifest: Path, out: Path, batch_size: int) -> tuple[int, float]:
    from instantstyle.batch import BatchOptions, run_batch

    start = time.perf_counter()
    summary = run_batch(manifest, BatchOptions(out=out, batch_size=batch_size, progress=False), model=model)
    sync()
    assert summary.failed == 0, summary.lines()
    return summary.images, time.perf_counter() - start


def torchrun(manifest: Path, out: Path, workers: int) -> tuple[int, float, float]:
    """``workers`` CPU processes on the tiny model: (images, generation seconds, wall seconds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(workers),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "instantstyle",
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--base",
        "tiny",
        "--device",
        "cpu",
        "--quiet",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}): {proc.stderr[-2000:]}")
    match = re.search(r"(\d+) images in ([\d.]+) s", proc.stdout)
    return int(match.group(1)), float(match.group(2)), wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="tiny model on the CPU (default: full-size random SDXL on CUDA)"
    )
    ap.add_argument("--rows", type=int, default=None, help="manifest rows (default: 24 tiny, 16 GPU)")
    ap.add_argument("--steps", type=int, default=None, help="steps per image (default: 2 tiny, 30 GPU)")
    ap.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default: 64 tiny, 1024 GPU)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="the batched run's --batch-size (default: 2 tiny, 4 GPU)"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="--tiny: processes of the N-worker run (default: 2)"
    )
    ap.add_argument("--speed", default="graphs", help="GPU fast path (default: graphs, ready in seconds)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU numbers")
    tiny = args.tiny
    rows = args.rows or (24 if tiny else 16)
    steps = args.steps or (2 if tiny else 30)
    size = args.size or (64 if tiny else 1024)
    batch_size = args.batch_size or (2 if tiny else 4)
    if tiny:
        torch.set_num_threads(1)
    device = "CPU (1 thread)" if tiny else torch.cuda.get_device_name()
    print(
        f"# bench_batch: {rows} rows, {steps} steps, {size} px, {'tiny' if tiny else 'full-size random SDXL fp16'} "
        f"on {device}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| run | workers | images | seconds | images/s | s/image vs plain loop |")
    print("|---|---|---|---|---|---|")
    results = []

    def report(name, workers, images, seconds, base=None):
        rate = images / seconds
        overhead = f"{(seconds / images) / base - 1:+.1%}" if base else ""
        print(f"| {name} | {workers} | {images} | {seconds:.2f} | {rate:.2f} | {overhead} |", flush=True)
        results.append(
            {"run": name, "workers": workers, "images": images, "seconds": seconds, "images_per_s": rate}
        )
        return seconds / images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_manifest(tmp, rows, steps, size)
        model = load_model(tiny, args.speed)
        from instantstyle import GenerateRequest

        model.generate(
            GenerateRequest(
                prompt="warm-up", style=[str(tmp / "warm.png")], steps=steps, seed=0, width=size, height=size
            )
        )  # compile / capture / first-call costs
        base = report("plain generate loop", 1, *plain_loop(model, manifest, tmp / "plain"))
        report("batch, --batch-size 1", 1, *batch_run(model, manifest, tmp / "b1", 1), base=base)
        report(
            f"batch, --batch-size {batch_size}",
            1,
            *batch_run(model, manifest, tmp / "bn", batch_size),
            base=base,
        )
        if tiny and args.workers > 1:
            images, seconds, wall = torchrun(manifest, tmp / "multi", args.workers)
            report(
                f"batch under torchrun ({wall:.0f} s with start-up and loads)",
                args.workers,
                images,
                seconds,
                base=base,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
