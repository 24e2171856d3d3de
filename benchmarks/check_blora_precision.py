"""B-LoRA's LoRA gradients at the default CUDA training precision (fp16 base) against fp32.

Builds full-size random-weight SDXL on the GPU (or the tiny model with ``--tiny``), draws random
LoRA weights (rank 64), and prints the relative L2 error of the fp16 gradients against fp32
gradients of the same loss, with the loss scaling ``train-blora`` uses and with a plain
``loss.backward()`` (what it did before), and how many gradient elements / whole LoRA tensors
are exactly zero.

    python benchmarks/check_blora_precision.py            # CUDA, 1024 px, ~2 min on an H200
    python benchmarks/check_blora_precision.py --tiny     # CPU, tiny model at 192 px
"""

from __future__ import annotations

import argparse
import copy

import torch
from PIL import Image


def main(argv=None) -> int:
    from instantstyle import blocks
    from instantstyle.methods.b_lora import lora_targets, scoped_lora
    from instantstyle.training import b_lora

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU")
    ap.add_argument("--resolution", type=int, default=None, help="default: 1024 (tiny: 192)")
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args(argv)
    if args.tiny:
        from instantstyle.testing.tiny import build_tiny

        fp32 = build_tiny().pipe
        res = args.resolution or 192
    else:
        from instantstyle.testing.fullsize import build_full_sdxl

        fp32 = build_full_sdxl("cuda", torch.float32, image_encoder=False).pipe
        res = args.resolution or 1024
    from diffusers import StableDiffusionXLPipeline

    parts = dict(fp32.components)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        parts[name] = copy.deepcopy(parts[name]).to(torch.float16)
    parts.update(image_encoder=None, feature_extractor=None)
    fp16 = StableDiffusionXLPipeline(**parts)
    unet = fp32.unet
    targets = lora_targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
    gen = torch.Generator().manual_seed(0)
    with scoped_lora(unet, targets, args.rank, args.rank) as params, torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen).to(p) * 0.02)
        state = b_lora._peft_state(unet, "blora")
    image = Image.new("RGB", (res * 5 // 4, res), (200, 60, 40))
    kw = dict(resolution=res, rank=args.rank, lora_state=state)
    ref = b_lora.lora_gradients(fp32, image, **kw)
    rows = [("loss scaling (train-blora)", b_lora.lora_gradients(fp16, image, **kw))]
    scaled = b_lora.Backprop.gradients
    b_lora.Backprop.gradients = lambda self, loss: loss.backward()  # the code before loss scaling
    try:
        rows.append(("plain backward (before)", b_lora.lora_gradients(fp16, image, **kw)))
    finally:
        b_lora.Backprop.gradients = scaled
    total = sum(g.numel() for g in ref.values())
    print(
        f"| fp16 gradients vs fp32, {res} px, rank {args.rank} | rel. L2 | zero elements | all-zero tensors |"
    )
    print("|---|---|---|---|")
    for label, got in rows:
        err = float(
            (
                sum(((got[k] - ref[k]) ** 2).sum() for k in ref) / sum((g**2).sum() for g in ref.values())
            ).sqrt()
        )
        zeros = sum(int((g == 0).sum()) for g in got.values())
        dead = sum(1 for g in got.values() if not g.abs().sum() > 0)
        print(f"| {label} | {err:.4f} | {zeros / total:.1%} | {dead} of {len(got)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
