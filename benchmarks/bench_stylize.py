"""Peak GPU memory and seconds per image of each stylize mode, on full-size random-weight SDXL.

What it does, in order:
1. Builds the full-size SDXL architecture with random weights directly on the device in fp16 (UNet
   2.567 B, both CLIP text encoders, the VAE, the ViT-bigG image encoder, an ip-adapter_sdxl-shaped
   IP-Adapter, and one SDXL ControlNet made with ``ControlNetModel.from_unet`` on the UNet's config).
   Weights do not change memory or time, so nothing is downloaded. ``--tiny`` uses the tiny test
   model on the CPU (seconds; the numbers mean nothing there).
2. Runs each mode once at 1024 px through the library (``InstantStyle.generate``), after one short
   warm-up: txt2img, controlnet (canny), img2img (strength 0.8), inpaint (strength 0.99),
   plus (InstantStyle-Plus: DDIM inversion + tile ControlNet + two adapters), then the memory
   modes, in the only order they can follow each other (group offloading cannot be undone):
   ``-low`` (model CPU offload + VAE tiling), ``-balanced`` (text and image encoders streamed
   from the CPU), ``-lowest`` (every model but the VAE streamed layer by layer + VAE tiling).
   The same ControlNet object serves the canny and tile roles (only one is resident, as in a
   real Plus run).
3. Reports ``torch.cuda.max_memory_allocated`` per mode (reset before each) and wall seconds;
   prints a Markdown table row by row and rewrites ``--json`` after every row.

Steps: 30 for every mode. Plus defaults to 30 inversion + 30 sampling steps here instead of its
50 + 50 to keep the whole run under the 150 s budget on one H100 (memory does not depend on the
step count; time per step does not either). ``--plus-steps 50`` for the real setting.

Examples:
    python benchmarks/bench_stylize.py --json stylize.json          # GPU, < 150 s on an H100
    python benchmarks/bench_stylize.py --tiny                       # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import torch

MODES = (
    "txt2img",
    "controlnet",
    "img2img",
    "inpaint",
    "plus",
    "plus-low",
    "plus-balanced",
    "controlnet-balanced",
    "plus-lowest",
    "txt2img-low",
    "txt2img-balanced",
    "txt2img-lowest",
)
MEMORY_ORDER = ("normal", "low", "balanced", "lowest")


def memory_of(mode: str) -> str:
    suffix = mode.rsplit("-", 1)[-1]
    return suffix if suffix in MEMORY_ORDER else "normal"


def task_of(mode: str) -> str:
    return mode.removesuffix("-" + memory_of(mode)) if memory_of(mode) != "normal" else mode


PROMPT = "a lighthouse on a cliff at dusk"


def load(args):
    """(InstantStyle, ControlNet ref to use) for the run."""
    from instantstyle import InstantStyle, control

    if args.tiny:
        from instantstyle.testing.tiny import tiny_controlnet

        model = InstantStyle.from_pretrained(
            "tiny", device="cpu", dtype="fp32", cache_dir=None, progress=False
        )
        controlnet = tiny_controlnet()
    else:
        from instantstyle.testing.fullsize import full_instantstyle

        model, controlnet = full_instantstyle("cuda", torch.float16, controlnet=True, speed=args.speed)
    control.register(model, "bench-controlnet", controlnet)  # serves both the canny and the tile role
    return model


def inputs(size: int, tmp: Path) -> dict[str, str]:
    import numpy as np
    from PIL import Image

    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = (230, 190, 40)
    a[..., 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    Image.fromarray(a).save(tmp / "content.png")
    Image.fromarray(np.roll(a, size // 3, axis=0)[..., ::-1].copy()).save(tmp / "style.png")
    m = np.zeros((size, size), np.uint8)
    m[:, size // 2 :] = 255
    Image.fromarray(m).save(tmp / "mask.png")
    return {k: str(tmp / f"{k}.png") for k in ("content", "style", "mask")}


def request(mode: str, files: dict, steps: int, plus_steps: int) -> dict:
    cn = "bench-controlnet"
    base = dict(prompt=PROMPT, style=[files["style"]], steps=steps, seed=1234)
    if mode == "txt2img":
        return base
    if mode == "controlnet":
        return base | dict(content=files["content"], control=[f"canny={cn}"])
    if mode == "img2img":
        return base | dict(content=files["content"], strength=0.8)
    if mode == "inpaint":
        return base | dict(content=files["content"], mask=files["mask"])
    return base | dict(task="plus", content=files["content"], control=[f"tile={cn}"], steps=plus_steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test, seconds)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per mode (default 30; tiny: 2)")
    ap.add_argument(
        "--plus-steps",
        type=int,
        default=None,
        help="Plus inversion = sampling steps (default 30, the paper's is 50; tiny: 2)",
    )
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list from {', '.join(MODES)}")
    ap.add_argument(
        "--budget-s", type=float, default=140.0, help="skip the remaining modes past this many seconds"
    )
    ap.add_argument(
        "--speed",
        default="exact",
        help="fast-path setting (default exact: no compilation, so each mode's single timed call "
        "is not dominated by compiling; memory is the model's own)",
    )
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --tiny on a CPU")
    steps = args.steps or (2 if args.tiny else 30)
    plus_steps = args.plus_steps or (2 if args.tiny else 30)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")
    modes.sort(key=lambda m: MEMORY_ORDER.index(memory_of(m)))  # stable: the given order within a memory mode

    t_start = time.perf_counter()
    cuda = not args.tiny
    model = load(args)
    build_s = time.perf_counter() - t_start
    device = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    result = {
        "device": device,
        "dtype": str(model.dtype),
        "size": model.native_size,
        "steps": steps,
        "plus_steps": plus_steps,
        "build_s": round(build_s, 1),
        "rows": [],
    }
    print(
        f"built in {build_s:.1f} s on {device}; {model.native_size} px, {steps} steps (plus: {plus_steps} + "
        f"{plus_steps} inversion)\n"
    )
    print("| mode | peak GiB | s/image | note |\n|---|---|---|---|", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        files = inputs(model.native_size, Path(tmp))
        if cuda:
            model.generate(
                prompt=PROMPT, style=[files["style"]], steps=2, seed=0
            )  # warm-up (kernels, allocator)
        for mode in modes:
            if time.perf_counter() - t_start > args.budget_s:
                row = {"mode": mode, "skipped": f"over the {args.budget_s:.0f} s budget"}
                result["rows"].append(row)
                print(f"| {mode} | - | - | skipped (budget) |", flush=True)
                continue
            row = {"mode": mode, "memory": memory_of(mode)}
            if memory_of(mode) != "normal" and not cuda:
                row["skipped"] = "offloading needs CUDA"
                result["rows"].append(row)
                print(f"| {mode} | - | - | skipped (needs CUDA) |", flush=True)
                continue
            try:
                if memory_of(mode) != model.memory:
                    model.set_memory(memory_of(mode))
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                image = model.generate(**request(task_of(mode), files, steps, plus_steps))[0]
                if cuda:
                    torch.cuda.synchronize()
                row["s_per_image"] = round(time.perf_counter() - t0, 2)
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
                row["peak_reserved_gib"] = (
                    round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None
                )
                row["size"] = list(image.size)
                note = f"{image.width}x{image.height}" + (
                    f", reserved {row['peak_reserved_gib']} GiB" if cuda else ""
                )
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                note = "ERROR " + row["error"]
                traceback.print_exc()
            result["rows"].append(row)
            print(
                f"| {mode} | {row.get('peak_gib') or '-'} | {row.get('s_per_image', '-')} | {note} |",
                flush=True,
            )
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2))
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    print(f"\ntotal {result['total_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
