"""``instantstyle train-blora``: a B-LoRA (arXiv 2403.14572) trained on one style image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InstantStyleError
from . import common, options


def register(sub) -> None:
    tb = common.add_command(
        sub,
        "train-blora",
        run,
        help="train a B-LoRA on one style image",
        description="Train B-LoRA (arXiv 2403.14572) on one image: LoRA on q/k/v/out of both "
        "attentions in the content and style blocks (up_blocks.0.attentions.0 and .1), "
        "prompt 'A [v]', AdamW (weight decay 1e-4), constant learning rate, gradient "
        "clipping 1.0; the image keeps its aspect ratio (short side = --resolution). "
        "An fp16 base (the CUDA default) trains with loss scaling. Use it with `instantstyle "
        "generate --method b-lora --b-lora DIR`. About 10 minutes on an A100 for 1000 "
        "steps at 1024 px (paper).",
        epilog="example:\n  instantstyle train-blora --image ref.png --out blora/\n"
        "  instantstyle train-blora --image ref.png --out blora/ --steps 1500 --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tb.add_argument("--image", required=True, metavar="IMG", help="the style image")
    tb.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (new or empty, unless --resume)"
    )
    tb.add_argument(
        "--steps", type=int, default=1000, help="training steps (default: %(default)s, the paper's)"
    )
    tb.add_argument("--rank", type=int, default=64, help="LoRA rank (default: %(default)s, the paper's)")
    tb.add_argument(
        "--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default: %(default)s)"
    )
    tb.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="AdamW weight decay (default: %(default)s, the authors')",
    )
    tb.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the gradient norm to this, 0 = off (default: %(default)s, the authors')",
    )
    tb.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="short side of the training image in pixels, aspect ratio kept (default: the model's "
        "native size, 1024 for SDXL)",
    )
    tb.add_argument("--seed", type=int, default=0, help="seed for noise and timesteps (default: %(default)s)")
    tb.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="save DIR/checkpoint.pt every N steps (default: %(default)s)",
    )
    tb.add_argument(
        "--resume", action="store_true", help="continue from DIR/checkpoint.pt (same image and settings)"
    )
    tb.add_argument("--quiet", action="store_true", help="no progress bar")
    tb.add_argument(
        "--base", default=None, help="SDXL base model (default: stabilityai/stable-diffusion-xl-base-1.0)"
    )
    tb.add_argument("--variant", default=None, help="weights variant to fetch, e.g. fp16")
    tb.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    tb.add_argument(
        "--dtype",
        default=None,
        choices=options.DTYPES,
        help="base weights dtype (default: fp16 on cuda/mps, fp32 on cpu); LoRA weights train in fp32; "
        "fp16 scales the loss (torch.amp.GradScaler)",
    )


def run(args) -> int:
    from .. import blocks, models, preflight
    from ..images import load_image
    from ..training import b_lora

    # 1. Check the image, the base model and the output directory before loading the base model.
    base = args.base or models.DEFAULT_BASE
    common.preflight(
        args,
        [lambda: load_image(args.image, what="B-LoRA image")],
        preflight.needs_for_base(base),
        tryout=common.TRYOUT,
    )
    image = load_image(args.image, what="B-LoRA image")
    out = Path(args.out)
    if not args.resume and out.exists() and any(out.iterdir()):
        raise InstantStyleError(
            f"--out '{out}' is not empty; pass --resume to continue its training or choose a new directory"
        )
    # 2. Load the base (no IP-Adapter needed), 3. train, 4. report.
    dev, dt = models.device_and_dtype(args.device, args.dtype)
    pipe = models.load_base_pipeline(base, dt, args.variant)  # any source, 'tiny' included
    blocks.blora_blocks(blocks.family(pipe.unet))  # B-LoRA is SDXL's: a one-line error on SD1.5
    pipe.to(dev)
    result = b_lora.train(
        pipe,
        image,
        out,
        steps=args.steps,
        rank=args.rank,
        lr=args.lr,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        resolution=args.resolution,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        base_id=models.canonical_id(base),
        progress=not args.quiet,
    )
    print(
        f"eval loss {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f} "
        f"({result.steps} steps, {result.seconds:.1f} s)",
        file=sys.stderr,
    )
    print(out)
    return 0
