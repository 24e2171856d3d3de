"""What each method costs: seconds per image, UNet passes per image, peak memory, B-LoRA training time.

    python benchmarks/bench_methods.py --tiny --json cost.json    # CPU, tiny random model, seconds
    python benchmarks/bench_methods.py --json cost.json           # CUDA: full-size random-weight SDXL, fp16

On CUDA the SDXL parts (UNet, VAE, both text encoders, the ViT-bigG image encoder, an
IP-Adapter) are built directly on the device with random weights from the public configs: cost does
not depend on the weights, and nothing is downloaded. "UNet rows" counts the latent rows the UNet
processes per output image (CFG doubles the batch); "x SDXL" divides it by a plain CFG generation's
``2 * steps``. B-LoRA training is timed for ``--train-steps`` steps and extrapolated to the paper's
1000 (labelled as such). Budget on an H100: well under 90 s in total with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from PIL import Image

METHODS = ("instantstyle", "ip-adapter", "style-aligned", "visual-style-prompting", "b-lora")
WORK = {
    "instantstyle": "none",
    "ip-adapter": "none",
    "style-aligned": "DDIM inversion of the reference (in the time)",
    "visual-style-prompting": "none (VAE encode of the reference, in the time)",
    "b-lora": "LoRA training (see below)",
}


def build_random_sdxl(device: str, dtype: torch.dtype):
    """Full-size SDXL + ViT-bigG + IP-Adapter with random weights, built on ``device``; stock diffusers
    attention (``speed="plain"``) for every method, so the comparison is like for like."""
    from instantstyle.testing.fullsize import full_instantstyle

    return full_instantstyle(device, dtype, speed="plain")[0]


def load_tiny():
    from instantstyle.model import InstantStyle

    return InstantStyle.from_pretrained(
        "tiny", device="cpu", dtype="fp32", cache_dir=None, progress=False, speed="plain"
    )


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(
    model, *, steps: int, size: int, train_steps: int, train_size: int, methods=METHODS, log=print
) -> dict:
    from instantstyle.training import b_lora

    device = model.device
    style = Image.new("RGB", (size, size), (200, 60, 40))
    rows = {"n": 0}
    hook = model.pipe.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: rows.__setitem__(
            "n", rows["n"] + (args[0] if args else kwargs["sample"]).shape[0]
        ),
        with_kwargs=True,
    )
    common = dict(prompt="a lighthouse at dusk", steps=steps, width=size, height=size, seed=0, guidance=5.0)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Warm-up (kernels, allocator) so the first method is not charged for it.
            model.generate(**{**common, "steps": 1}, style_images=[style])
            lora_dir = Path(tmp) / "blora"
            train = None
            if "b-lora" in methods:
                _sync(device)
                train = b_lora.train(
                    model.pipe,
                    style.resize((train_size, train_size)),
                    lora_dir,
                    steps=train_steps,
                    checkpoint_every=10**9,
                    resolution=train_size,
                    progress=False,
                )
                _sync(device)
            for name in methods:
                extra = {
                    "instantstyle": {},
                    "ip-adapter": {},
                    "b-lora": {"b_lora": str(lora_dir)},
                    "style-aligned": {"reference_prompt": "a red painting"},
                    "visual-style-prompting": {"reference_prompt": "a red painting"},
                }[name]
                refs = None if name == "b-lora" else [style]
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rows["n"] = 0
                _sync(device)
                t0 = time.perf_counter()
                model.generate(**common, method=name, style_images=refs, **extra)
                _sync(device)
                seconds = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
                results.append(
                    {
                        "method": name,
                        "seconds_per_image": round(seconds, 3),
                        "unet_rows": rows["n"],
                        "x_sdxl_passes": round(rows["n"] / (2 * steps), 2),
                        "peak_memory_mib": None if peak is None else round(peak),
                        "per_reference_work": WORK[name],
                    }
                )
                log(f"{name}: {seconds:.2f} s")
    finally:
        hook.remove()
    base = next((r["seconds_per_image"] for r in results if r["method"] == "instantstyle"), None)
    for r in results:
        r["relative_time"] = round(r["seconds_per_image"] / base, 2) if base else None
    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(model.dtype).removeprefix("torch."),
        "base": model.ids["base"],
        "steps": steps,
        "size": size,
        "methods": results,
    }
    if train is not None:
        report["b_lora_training"] = {
            "measured_steps": train_steps,
            "resolution": train_size,
            "rank": 64,
            "seconds_per_step": round(train.step_seconds, 4),
            "extrapolated_1000_steps_s": round(train.step_seconds * 1000, 1),
            "note": f"measured over {train_steps} steps, extrapolated to 1000 (the paper's recipe)",
        }
    return report


def markdown(report: dict) -> str:
    head = (
        f"Device: {report['gpu'] or report['device']} ({report['dtype']}), base {report['base']}, "
        f"{report['size']}x{report['size']} px, {report['steps']} steps, CFG.\n"
    )
    lines = [
        head,
        "| method | s/image | vs instantstyle | UNet rows/image | x SDXL passes | peak MiB | "
        "per-reference work |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["methods"]:
        mem = "n/a (CPU)" if r["peak_memory_mib"] is None else str(r["peak_memory_mib"])
        lines.append(
            f"| {r['method']} | {r['seconds_per_image']:.3f} | {r['relative_time']} | {r['unet_rows']} | "
            f"{r['x_sdxl_passes']} | {mem} | {r['per_reference_work']} |"
        )
    t = report.get("b_lora_training")
    if t:
        lines += [
            "",
            f"B-LoRA training (rank 64, {t['resolution']} px): {t['seconds_per_step']} s/step measured over "
            f"{t['measured_steps']} steps; 1000 steps extrapolated: {t['extrapolated_1000_steps_s']} s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny random model on CPU (seconds)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 10; tiny: 2)")
    p.add_argument("--size", type=int, default=None, help="image size (default: 1024; tiny: 64)")
    p.add_argument(
        "--train-steps", type=int, default=None, help="B-LoRA steps to time (default: 20; tiny: 3)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.tiny:
        model, steps, size, train_steps, train_size = (
            load_tiny(),
            args.steps or 2,
            args.size or 64,
            args.train_steps or 3,
            8,
        )
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device: use --tiny for the CPU run")
        model = build_random_sdxl("cuda", torch.float16)
        steps, size, train_steps = args.steps or 10, args.size or 1024, args.train_steps or 20
        train_size = size
    print(f"models ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report = run(
        model,
        steps=steps,
        size=size,
        train_steps=train_steps,
        train_size=train_size,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        log=lambda msg: print(msg, file=sys.stderr),
    )
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
