"""``instantstyle stylize``: InstantStyle-Plus (= ``generate --task plus``), the same flags and run."""

from __future__ import annotations

import argparse

from . import common, generate


def register(sub) -> None:
    z = common.add_command(
        sub,
        "stylize",
        generate.run,
        help="InstantStyle-Plus: repaint --content in the style of --style",
        description="InstantStyle-Plus (= generate --task plus), as its authors' infer_style.py: "
        "ReNoise inversion of the content image (--inversion ddim for plain DDIM), tile "
        "ControlNet on it (0.4), the IP-Adapter on the content image at a low global "
        "scale (0.2) and on the style image in the style block only (1.2), guidance 5, "
        "50 DDIM steps on the inversion's timesteps, their negative prompt, the content "
        "sized short side 1024 / long side 1280 / multiples of 64. Both adapters are the "
        "loaded --adapter (one set of weights, shared): the default bigG "
        "ip-adapter_sdxl, so InstantStyle and Plus run on one model; the authors use the "
        "ViT-H pair: --adapter h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors "
        "--image-encoder h94/IP-Adapter/models/image_encoder.",
        epilog=generate.STYLIZE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_generate_args(z, stylize=True)
