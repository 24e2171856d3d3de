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
        "config; no weights are loaded), marking the style and layout blocks of its family "
        "(SDXL or SD1.5, read from the UNet's structure), and that family's presets. "
        "Example: instantstyle blocks --base tiny-sd15",
    )
    b.add_argument(
        "--base",
        default=None,
        help="SDXL or SD1.5 base model: diffusers directory, Hub id, single file, tiny or tiny-sd15 "
        "(default: stabilityai/stable-diffusion-xl-base-1.0)",
    )
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from .. import blocks, models, preflight

    base = args.base or models.DEFAULT_BASE
    common.preflight(args, needs=[preflight.Need("base model", base, "unet-config")], tryout=common.TRYOUT)
    config = models.load_unet_config(base)
    unet = models.meta_unet(config)
    family = blocks.family(unet)
    modules = blocks.discover(unet)
    rows = blocks.describe(modules, sample_size=config.get("sample_size"))
    if args.json:
        table = blocks.preset_table(family)
        print(json.dumps({"base": base, "family": family, "modules": rows, "presets": table}, indent=2))
        return 0
    headers = ["module", "level", "latent_grid", "channels", "layers", "role"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    label = blocks.FAMILY_LABELS[family]
    print(f"cross-attention modules of {base}, an {label} UNet (latent grid at the model's native size):")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(f"\n{label} presets (the style goes into the conditional branch unless marked):")
    for name in blocks.presets(family):
        print("  " + blocks.describe_preset(name, family))
    print(
        "a layer: <module>.transformer_blocks.<i>, e.g. "
        f"{modules[0].layer_name(0) if modules else ''}; --blocks NAME=SCALE,NAME=SCALE"
    )
    return 0
