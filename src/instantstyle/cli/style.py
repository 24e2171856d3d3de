"""``instantstyle style save | list | show | rm``: reusable styles (encoded once, used as ``@NAME``)."""

from __future__ import annotations

import json

from ..errors import InstantStyleError
from . import common, options

STYLES_DIR_HELP = "default: $INSTANTSTYLE_STYLES or ~/.local/share/instantstyle/styles"


def register(sub) -> None:
    st = common.add_command(sub, "style", run, help="save, list, show and delete reusable styles")
    st_sub = st.add_subparsers(dest="style_command", metavar="ACTION", required=True)
    save = st_sub.add_parser(
        "save",
        parents=[common.debug_parent()],
        help="encode reference images once and save them as NAME",
        description="Encode references with the image encoder and save them as a style "
        "file; use it later with --style @NAME.",
    )
    save.add_argument("name")
    save.add_argument("images", nargs="+", metavar="IMAGE")
    save.add_argument("--weights", nargs="+", default=None, metavar="W", help="one weight per image")
    save.add_argument("--overwrite", action="store_true")
    save.add_argument("--styles-dir", default=None, help=STYLES_DIR_HELP)
    save.add_argument(
        "--base",
        default=None,
        help="tiny: encode with the tiny model's image encoder (as generate --base tiny); otherwise "
        "the styles depend only on --image-encoder",
    )
    save.add_argument(
        "--features",
        choices=("global", "patch"),
        default="global",
        help="what the style's adapter reads: global (the projected image embedding: ip-adapter_sdxl, "
        "*_vit-h) or patch (the penultimate hidden states an IP-Adapter Plus reads; with "
        "--image-encoder h94/IP-Adapter/models/image_encoder)",
    )
    options.add_model_args(save, encoder_only=True)
    ls = st_sub.add_parser("list", parents=[common.debug_parent()], help="list saved styles")
    ls.add_argument("--styles-dir", default=None)
    show = st_sub.add_parser("show", parents=[common.debug_parent()], help="show a saved style's metadata")
    show.add_argument("name")
    show.add_argument("--styles-dir", default=None)
    rm = st_sub.add_parser("rm", parents=[common.debug_parent()], help="delete a saved style")
    rm.add_argument("name")
    rm.add_argument("--styles-dir", default=None)


def run(args) -> int:
    from .. import embeddings

    directory = getattr(args, "styles_dir", None)
    if args.style_command == "list":
        for name in embeddings.list_styles(directory):
            print(name)
        return 0
    if args.style_command == "show":
        style = embeddings.load_style(args.name, directory)
        print(
            json.dumps(
                {
                    "name": style.name,
                    "images": len(style.weights),
                    "weights": style.weights,
                    "encoder_id": style.encoder_id,
                    "features": style.features,
                    "image_sha256": style.image_hashes,
                    "dim": style.embeds.shape[-1],
                },
                indent=2,
            )
        )
        return 0
    if args.style_command == "rm":
        embeddings.delete_style(args.name, directory)
        return 0
    return _save(args, directory)


def _save(args, directory) -> int:
    from .. import embeddings, models
    from ..images import load_image

    embeddings.style_path(args.name, directory)  # validate the name before loading the encoder
    weights = None
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights]
        except ValueError:
            raise InstantStyleError(f"--weights {args.weights}: weights must be numbers") from None
    spec = args.image_encoder or models.default_image_encoder(args.base)
    from .. import preflight

    common.preflight(
        args,
        [lambda: [load_image(p, what="style image") for p in args.images]],
        preflight.needs_for_encoder(spec),
        tryout=common.TRYOUT,
    )
    encoder, extractor, encoder_id = models.load_style_encoder(spec, args.device, args.dtype)
    enc = embeddings.StyleEncoder(
        encoder,
        extractor,
        encoder_id,
        embeddings.EmbeddingCache(embeddings.cache_dir()),
        styles_directory=directory,
        features=args.features,
    )
    style = enc.encode(args.images, weights)
    embeddings.combine_styles(style.embeds, style.weights)  # validates the weights
    path = embeddings.save_style(style, args.name, directory, overwrite=args.overwrite)
    print(path)
    return 0
