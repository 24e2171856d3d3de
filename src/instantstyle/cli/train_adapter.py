"""``instantstyle train-adapter``: IP-Adapter training on chosen blocks (flags from ``TrainConfig``)."""

from __future__ import annotations

import argparse

from . import common

TRAIN_EXAMPLES = """\
examples:
  # style blocks only, one GPU, bf16, from scratch (data: folder of images + same-name .txt captions)
  instantstyle train-adapter --base stabilityai/stable-diffusion-xl-base-1.0 --data ./my_images \\
      --blocks style --out runs/house-style --mixed-precision bf16 --gradient-checkpointing --max-steps 20000

  # many GPUs / nodes: the same command under accelerate
  accelerate launch --multi_gpu --num_processes 8 -m instantstyle train-adapter \\
      --data 'shards/train-{0000..0999}.tar' --blocks style --out runs/big --cache-dir /scratch/cache ...

  # continue after an interruption; re-run a finished configuration
  instantstyle train-adapter --config runs/house-style/train_config.json --resume latest
  instantstyle generate --adapter runs/house-style/adapter.safetensors --style ref.png --prompt "a cat" --out cat.png
"""


def register(sub) -> None:
    from ..training.config import add_arguments

    tr = common.add_command(
        sub,
        "train-adapter",
        run,
        help="train an IP-Adapter on chosen blocks (style blocks by default)",
        description="Train an IP-Adapter (image projection + to_k_ip/to_v_ip of the chosen blocks only; UNet, text "
        "encoders, VAE and image encoder frozen) on image-caption pairs, with accelerate. Blocks outside "
        "--blocks get no IP weights (zeros in the saved h94-layout file). See docs/training.md.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(tr)


def run(args) -> int:
    from .. import models, preflight
    from ..training.adapter_trainer import train_adapter
    from ..training.config import config_from_args

    config = config_from_args(args)
    encoder = config.image_encoder or models.default_image_encoder(config.base)
    from ..training.data import open_source

    common.preflight(
        args,
        [lambda: open_source(config.data)],  # the data first: an empty folder needs no models
        preflight.needs_for_base(config.base) + preflight.needs_for_encoder(encoder),
        tryout=common.TRYOUT,
    )
    result = train_adapter(config, progress=not args.quiet)
    if result.adapter is not None:
        print(result.adapter)
    return 0
