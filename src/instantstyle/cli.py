"""Command line: ``instantstyle generate | blocks | style | make-tiny``.

A thin front end: it parses flags into the shared ``GenerateRequest``, calls the library and
writes files. Bad input exits with status 2 and one line ``instantstyle: error: ...`` (the
traceback only with ``--debug``); an unexpected failure exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from .errors import InstantStyleError

EXAMPLES = """\
examples:
  # style of ref.png, style block only (the default), content of the reference subtracted
  instantstyle generate --style ref.png --prompt "a cat, masterpiece" \\
      --content-prompt "a dog" --seed 42 --out cat.png

  # no weights needed: the tiny random model (its images are noise)
  instantstyle generate --base tiny --style ref.png --prompt "a cat" --out cat.png

  # style + layout, custom strength per block and per layer
  instantstyle generate --style ref.png --prompt "a house" --mode style+layout --scale 0.8 --out h.png
  instantstyle generate --style ref.png --prompt "a house" --out h.png \\
      --blocks up_blocks.0.attentions.1=1.0,down_blocks.2.attentions.1=0.5

  # two references mixed 70/30, saved once and reused
  instantstyle style save watercolour a.png b.png --weights 0.7 0.3
  instantstyle generate --style @watercolour --prompt "a lighthouse" --out l.png
"""


def _field_help(name: str) -> str:
    from .config import GenerateRequest

    field = GenerateRequest.model_fields[name]
    default = field.default
    shown = "" if default in (None, [], "") or callable(default) else f" (default: {default})"
    return (field.description or "") + shown


def _add_model_args(p: argparse.ArgumentParser, *, encoder_only: bool = False) -> None:
    from . import models

    g = p.add_argument_group("models (local path, Hub 'owner/repo[/path]', or 'tiny')")
    if not encoder_only:
        g.add_argument("--base", default=models.DEFAULT_BASE, help="SDXL base model (default: %(default)s)")
        g.add_argument("--adapter", default=None,
                       help=f"IP-Adapter .safetensors/.bin in the h94 layout (default: {models.DEFAULT_ADAPTER})")
        g.add_argument("--variant", default=None, help="weights variant to fetch, e.g. fp16 (halves the download)")
        g.add_argument("--content-text-encoder", default=None,
                       help="CLIPTextModelWithProjection for content subtraction when the image encoder's space "
                            "is not text_encoder_2's (e.g. ViT-H adapters)")
    g.add_argument("--image-encoder", default=None,
                   help=f"CLIPVisionModelWithProjection directory (default: {models.DEFAULT_IMAGE_ENCODER})")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                   help="default: fp16 on cuda/mps, fp32 on cpu")
    if not encoder_only:  # same names as instantstyle.fastpath.SPEEDS / MEMORY_MODES (checked by a test)
        g.add_argument("--speed", default="auto", choices=["auto", "plain", "exact", "fast", "max", "fp8"],
                       help="fast path: auto = fast on CUDA (compiled blocks, fused QKV, channels-last), exact on "
                            "CPU; plain = stock diffusers; max adds CUDA graphs; fp8 (Hopper/Ada) changes the "
                            "picture slightly (default: auto)")
        g.add_argument("--memory", default="normal", choices=["normal", "low", "lowest"],
                       help="low = model CPU offload + VAE tiling (fits ~8 GB GPUs); lowest = sequential "
                            "offload (slow, ~4 GB) (default: normal)")


def build_parser() -> argparse.ArgumentParser:
    from .config import MODES, SCHEDULERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = argparse.ArgumentParser(
        prog="instantstyle",
        description="Text-to-image in the style of reference images on SDXL (InstantStyle, arXiv 2404.02733): "
        "the reference's CLIP features go only into the style blocks, and its content can be subtracted.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"instantstyle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # generate ------------------------------------------------------------------
    g = sub.add_parser("generate", parents=[common], help="generate images in the style of reference images",
                       description="Generate images from a prompt in the style of one or more reference images.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = g.add_argument_group("style")
    s.add_argument("--style", action="append", default=[], metavar="IMG|@NAME",
                   help="style reference image, or @name of a saved style; repeat for several")
    s.add_argument("--style-weights", nargs="+", default=None, metavar="W", help=_field_help("style_weights"))
    s.add_argument("--style-combine", default="mean", choices=["mean", "concat"], help=_field_help("style_combine"))
    s.add_argument("--mode", default=None, choices=MODES, help=_field_help("mode") + " (default: style)")
    s.add_argument("--scale", default="1.0", help=_field_help("scale") + " (default: 1.0)")
    s.add_argument("--blocks", default=None, metavar="SPEC", help=_field_help("blocks") + " See `instantstyle blocks`.")
    s.add_argument("--content-prompt", default=None, metavar="TEXT", help=_field_help("content_prompt"))
    s.add_argument("--content-scale", default=None, metavar="F", help=_field_help("content_scale"))
    s.add_argument("--method", default="instantstyle", help=_field_help("method"))
    p = g.add_argument_group("prompt and sampling")
    p.add_argument("--prompt", required=True, metavar="TEXT", help=_field_help("prompt"))
    p.add_argument("--negative-prompt", default=None, metavar="TEXT", help=_field_help("negative_prompt"))
    p.add_argument("--steps", default="30", metavar="N", help=_field_help("steps") + " (default: 30)")
    p.add_argument("--guidance", default="5.0", metavar="F", help=_field_help("guidance") + " (default: 5.0)")
    p.add_argument("--seed", default=None, metavar="N", help=_field_help("seed"))
    p.add_argument("--width", default=None, metavar="W", help=_field_help("width"))
    p.add_argument("--height", default=None, metavar="H", help=_field_help("height"))
    p.add_argument("--num-images", default="1", metavar="N", help=_field_help("num_images") + " (default: 1)")
    p.add_argument("--scheduler", default="euler", choices=SCHEDULERS, help="sampler (default: euler, SDXL's own)")
    o = g.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="PATH",
                   help="output PNG; with --num-images N, PATH-0.png ... PATH-(N-1).png; a directory (existing, "
                        "or ending in /) gets instantstyle-SEED-I.png")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("--max-pixels", type=int, default=None, help="refuse style images with more pixels (default 40M)")
    o.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(g)

    # blocks ----------------------------------------------------------------------
    b = sub.add_parser("blocks", parents=[common], help="list the UNet's cross-attention blocks and presets",
                       description="Print the cross-attention modules of a base model's UNet (read from its "
                                   "config; no weights are loaded), marking the style and layout blocks.")
    b.add_argument("--base", default=None, help="SDXL base model (default: stabilityai/stable-diffusion-xl-base-1.0)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")

    # style -----------------------------------------------------------------------
    st = sub.add_parser("style", parents=[common], help="save, list, show and delete reusable styles")
    st_sub = st.add_subparsers(dest="style_command", metavar="ACTION", required=True)
    save = st_sub.add_parser("save", parents=[common], help="encode reference images once and save them as NAME",
                             description="Encode references with the image encoder and save them as a style "
                                         "file; use it later with --style @NAME.")
    save.add_argument("name")
    save.add_argument("images", nargs="+", metavar="IMAGE")
    save.add_argument("--weights", nargs="+", default=None, metavar="W", help="one weight per image")
    save.add_argument("--overwrite", action="store_true")
    save.add_argument("--styles-dir", default=None, help="default: $INSTANTSTYLE_STYLES or ~/.local/share/instantstyle/styles")
    _add_model_args(save, encoder_only=True)
    ls = st_sub.add_parser("list", parents=[common], help="list saved styles")
    ls.add_argument("--styles-dir", default=None)
    show = st_sub.add_parser("show", parents=[common], help="show a saved style's metadata")
    show.add_argument("name")
    show.add_argument("--styles-dir", default=None)
    rm = st_sub.add_parser("rm", parents=[common], help="delete a saved style")
    rm.add_argument("name")
    rm.add_argument("--styles-dir", default=None)

    # make-tiny -------------------------------------------------------------------
    t = sub.add_parser("make-tiny", parents=[common], help="write the tiny random-weight test model to DIR",
                       description="Write a tiny random-weight SDXL (real block structure), image encoder and "
                                   "IP-Adapter in the standard on-disk layouts. Its images are noise.")
    t.add_argument("dir")
    return parser


# ---------------------------------------------------------------------- commands


def _output_paths(out: str, n: int, seed: int, overwrite: bool) -> list[Path]:
    from .images import check_output_path

    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        if not path.is_dir():
            raise InstantStyleError(f"output directory '{path}' does not exist; create it first")
        paths = [path / f"instantstyle-{seed}-{i}.png" for i in range(n)]
    else:
        if path.suffix.lower() != ".png":
            raise InstantStyleError(f"--out '{out}': outputs are PNG files; use a name ending in .png")
        paths = [path] if n == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]
    return [check_output_path(p, overwrite=overwrite) for p in paths]


def _check_blocks(base: str, req) -> None:
    """Resolve the block spec against the base model's UNet config (kilobytes) before loading weights."""
    from . import blocks, models

    if req.method != "instantstyle":
        return
    try:
        config = models.load_unet_config(base)
    except InstantStyleError:
        return  # the full load reports the missing model with its fetch command
    spec = blocks.parse_spec(req.blocks) if req.blocks else blocks.preset_spec(req.mode)
    blocks.resolve(blocks.discover(models.meta_unet(config)), spec, req.scale)


def _quiet_libraries() -> None:
    """Library chatter (deprecation notes, backend fallbacks) is not for CLI users; --debug keeps it."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def _no_progress_bars() -> None:
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except (ImportError, AttributeError):
        pass


def cmd_generate(args) -> int:
    from .config import make_request

    # 1. Validate the request and the outputs before loading anything.
    if args.mode is not None and args.blocks is not None:
        raise InstantStyleError("give --mode or --blocks, not both (--blocks replaces the preset)")
    seed = args.seed if args.seed is not None else str(secrets.randbelow(2**31))
    req = make_request(
        prompt=args.prompt, negative_prompt=args.negative_prompt, style=args.style,
        style_weights=args.style_weights, style_combine=args.style_combine, method=args.method,
        mode=args.mode or "style", scale=args.scale, blocks=args.blocks, content_prompt=args.content_prompt,
        content_scale=args.content_scale, steps=args.steps, guidance=args.guidance, seed=seed,
        width=args.width, height=args.height, num_images=args.num_images, scheduler=args.scheduler,
    )
    if not req.style:
        raise InstantStyleError("no style image given; pass --style IMAGE (or --style @NAME of a saved style)")
    paths = _output_paths(args.out, req.num_images, req.seed, args.overwrite)
    _check_blocks(args.base, req)
    from .embeddings import load_style
    from .images import load_image

    for ref in req.style:  # fail on a bad reference before loading gigabytes of weights
        load_style(ref) if ref.startswith("@") else load_image(ref, what="style image",
                                                               max_pixels=args.max_pixels or 40_000_000)

    # 2. Load models, 3. generate, 4. write atomically.
    from .images import save_png
    from .pipeline import InstantStyle

    model = InstantStyle.from_pretrained(
        args.base, args.adapter, args.image_encoder, device=args.device, dtype=args.dtype, variant=args.variant,
        content_text_encoder=args.content_text_encoder, cache_dir=not args.no_cache, progress=not args.quiet,
        speed=args.speed, memory=args.memory,
    )
    if args.max_pixels:
        model.styles.max_pixels = args.max_pixels
    images = model.generate(req)
    for image, path in zip(images, paths, strict=True):
        save_png(image, path, overwrite=args.overwrite)
        print(path)
    return 0


def cmd_blocks(args) -> int:
    from . import blocks, models

    base = args.base or models.DEFAULT_BASE
    config = models.load_unet_config(base)
    modules = blocks.discover(models.meta_unet(config))
    rows = blocks.describe(modules, sample_size=config.get("sample_size"))
    if args.json:
        print(json.dumps({"base": base, "modules": rows, "presets": blocks.PRESETS}, indent=2))
        return 0
    headers = ["module", "level", "latent_grid", "channels", "layers", "role"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print(f"cross-attention modules of {base} (latent grid at the model's native size):")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("\npresets: " + "; ".join(f"{k} = {', '.join(v) if v != ('*',) else 'every module'}"
                                     for k, v in blocks.PRESETS.items()))
    print("a layer: <module>.transformer_blocks.<i>, e.g. "
          f"{modules[0].layer_name(0) if modules else ''}; --blocks NAME=SCALE,NAME=SCALE")
    return 0


def cmd_style(args) -> int:
    from . import embeddings

    directory = getattr(args, "styles_dir", None)
    if args.style_command == "list":
        for name in embeddings.list_styles(directory):
            print(name)
        return 0
    if args.style_command == "show":
        style = embeddings.load_style(args.name, directory)
        print(json.dumps({"name": style.name, "images": len(style.weights), "weights": style.weights,
                          "encoder_id": style.encoder_id, "image_sha256": style.image_hashes,
                          "dim": style.embeds.shape[-1]}, indent=2))
        return 0
    if args.style_command == "rm":
        embeddings.delete_style(args.name, directory)
        return 0
    # save
    from . import models

    embeddings.style_path(args.name, directory)  # validate the name before loading the encoder
    weights = None
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights]
        except ValueError:
            raise InstantStyleError(f"--weights {args.weights}: weights must be numbers") from None
    encoder, extractor, encoder_id = models.load_style_encoder(
        args.image_encoder or models.DEFAULT_IMAGE_ENCODER, args.device, args.dtype)
    enc = embeddings.StyleEncoder(encoder, extractor, encoder_id, embeddings.EmbeddingCache(embeddings.cache_dir()),
                                  styles_directory=directory)
    style = enc.encode(args.images, weights)
    embeddings.combine_styles(style.embeds, style.weights)  # validates the weights
    path = embeddings.save_style(style, args.name, directory, overwrite=args.overwrite)
    print(path)
    return 0


def cmd_make_tiny(args) -> int:
    from .testing.tiny import make_tiny

    paths = make_tiny(args.dir)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


COMMANDS = {"generate": cmd_generate, "blocks": cmd_blocks, "style": cmd_style, "make-tiny": cmd_make_tiny}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_libraries()
    if getattr(args, "quiet", False):
        _no_progress_bars()
    try:
        return COMMANDS[args.command](args)
    except InstantStyleError as exc:
        if args.debug:
            raise
        print(f"instantstyle: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("instantstyle: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into one line
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"instantstyle: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
