"""``instantstyle blocks``: the UNet's cross-attention modules and the presets, from its config."""

from __future__ import annotations

import json

from . import common


def register(sub) -> None:
    b = common.add_command(
        sub,
        "blocks",
        run,
        help="list the UNet's cross-attention blocks and presets",
        description="Print the cross-attention modules of a base model's UNet (read from its "
        "config; no weights are loaded), marking the style and layout blocks.",
    )
    b.add_argument(
        "--base", default=None, help="SDXL base model (default: stabilityai/stable-diffusion-xl-base-1.0)"
    )
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from .. import blocks, models, preflight

    base = args.base or models.DEFAULT_BASE
    common.preflight(args, needs=[preflight.Need("base model", base, "unet-config")], tryout=common.TRYOUT)
    config = models.load_unet_config(base)
    modules = blocks.discover(models.meta_unet(config))
    rows = blocks.describe(modules, sample_size=config.get("sample_size"))
    if args.json:
        print(json.dumps({"base": base, "modules": rows, "presets": blocks.preset_table()}, indent=2))
        return 0
    headers = ["module", "level", "latent_grid", "channels", "layers", "role"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print(f"cross-attention modules of {base} (latent grid at the model's native size):")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("\npresets (the style goes into the conditional branch unless marked):")
    for name in blocks.PRESETS:
        print("  " + blocks.describe_preset(name))
    print(
        "a layer: <module>.transformer_blocks.<i>, e.g. "
        f"{modules[0].layer_name(0) if modules else ''}; --blocks NAME=SCALE,NAME=SCALE"
    )
    return 0
