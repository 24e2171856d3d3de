"""``instantstyle generate``: text-to-image in the style of reference images, and (with
``--content``) stylizing a content image. ``stylize`` shares these flags and ``run``."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from ..errors import InstantStyleError
from . import common, options

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

  # the baselines, and all methods side by side (see docs/comparing.md)
  instantstyle generate --method style-aligned --style ref.png --reference-prompt "a watercolour harbour" \\
      --prompt "a lighthouse, watercolour" --out sa.png
  instantstyle train-blora --image ref.png --out blora/
  instantstyle generate --method b-lora --lora blora/ --prompt "a lighthouse" --out bl.png
  instantstyle compare --style ref.png --prompt "a lighthouse" --prompt "a cat" \\
      --reference-prompt "a watercolour harbour" --out cmp/

  # two references mixed 70/30, saved once and reused
  instantstyle style save watercolour a.png b.png --weights 0.7 0.3
  instantstyle generate --style @watercolour --prompt "a lighthouse" --out l.png
"""

STYLIZE_EXAMPLES = """\
stylize a content image (see docs/stylize.md):
  # keep photo.png's edges (Canny ControlNet, scale 0.6), paint it in ref.png's style
  instantstyle generate --style ref.png --content photo.png --control canny --prompt "a house" --out a.png
  # img2img, inpainting (white = repaint; the style goes only there)
  instantstyle generate --style ref.png --content photo.png --strength 0.7 --prompt "a house" --out b.png
  instantstyle generate --style ref.png --content photo.png --mask mask.png --prompt "a house" --out c.png
  # two styles, one per region
  instantstyle generate --style a.png --style-mask left.png --style b.png --style-mask right.png \\
      --content photo.png --control canny --prompt "a street" --out d.png
  # InstantStyle-Plus: inversion + tile ControlNet + content adapter 0.2 + style adapter 1.2
  instantstyle stylize --style ref.png --content photo.png --prompt "a house by a lake" --out e.png
"""


def register(sub) -> None:
    g = common.add_command(
        sub, "generate", run, help="generate images in the style of reference images",
        description="Generate images from a prompt in the style of one or more reference images; "
                    "with --content, repaint a content image in that style (ControlNet, img2img, "
                    "inpainting, InstantStyle-Plus).",
        epilog=EXAMPLES + STYLIZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_args(g)


class _ControlImage(argparse.Action):
    """``--control-image`` belongs to the ``--control`` given just before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        controls = getattr(namespace, "control", None) or []
        if not controls:
            parser.error("--control-image must follow the --control it belongs to")
        images = list(getattr(namespace, self.dest, None) or [])
        images += [None] * (len(controls) - len(images))
        if images[len(controls) - 1] is not None:
            parser.error(f"--control {controls[-1]} already has a --control-image")
        images[len(controls) - 1] = values
        setattr(namespace, self.dest, images)


def add_generate_args(g: argparse.ArgumentParser, *, stylize: bool = False) -> None:
    """Every flag of ``generate`` (``stylize=False``) or ``stylize``, group by group."""
    style = _add_style_args(g, stylize)
    _add_leakage_args(g)
    style.add_argument("--method", default="instantstyle", help=options.method_help())
    options.add_method_args(g)
    _add_content_args(g, stylize)
    _add_sampling_args(g, stylize)
    _add_output_args(g)
    options.add_model_args(g)
    g.set_defaults(stylize=stylize)


def _add_style_args(g, stylize: bool):
    from ..config import MODES

    fh = options.field_help
    s = g.add_argument_group("style")
    s.add_argument("--style", action="append", default=[], metavar="IMG|@NAME",
                   help="style reference image, or @name of a saved style; repeat for several")
    s.add_argument("--style-weights", nargs="+", default=None, metavar="W", help=fh("style_weights"))
    s.add_argument("--style-combine", default="mean", choices=["mean", "concat"], help=fh("style_combine", default=True))
    s.add_argument("--style-mask", dest="style_masks", action="append", default=[], metavar="MASK",
                   help=fh("style_masks") + " Repeat once per --style, in the same order.")
    mode_choices = MODES if stylize else (*MODES, "plus")
    s.add_argument("--mode", default=None, choices=mode_choices,
                   help=fh("mode") + (" plus = --task plus." if not stylize else "") + " (default: style)")
    s.add_argument("--scale", default=None, help=fh("scale") + (" (default: 1.2)" if stylize else
                                                                 " (default: 1.0; plus: 1.2)"))
    s.add_argument("--blocks", default=None, metavar="SPEC", help=fh("blocks") + " See `instantstyle blocks`.")
    s.add_argument("--content-prompt", default=None, metavar="TEXT", help=fh("content_prompt"))
    s.add_argument("--content-scale", default=None, metavar="F", help=fh("content_scale"))
    return s


def _add_leakage_args(g) -> None:
    fh = options.field_help
    lk = g.add_argument_group("leakage controls (see docs/leakage.md)")
    lk.add_argument("--layout-boost", default=None, metavar="F", help=fh("layout_boost"))
    lk.add_argument("--composition", default=None, metavar="IMAGE", help=fh("composition"))
    lk.add_argument("--composition-scale", default=None, metavar="F", help=fh("composition_scale"))
    lk.add_argument("--negative-style", default=None, metavar="IMAGE", help=fh("negative_style"))
    lk.add_argument("--negative-style-scale", default=None, metavar="F", help=fh("negative_style_scale"))
    lk.add_argument("--style-window", default=None, metavar="START:END", help=fh("style_window") + " (default: 0:1)")


def _add_content_args(g, stylize: bool) -> None:
    from ..config import TASKS

    fh = options.field_help
    c = g.add_argument_group("content image (ControlNet, img2img, inpainting, InstantStyle-Plus)")
    c.add_argument("--content", default=None, required=stylize, metavar="IMAGE", help=fh("content"))
    if not stylize:
        c.add_argument("--task", default=None, choices=TASKS, help=fh("task"))
    c.add_argument("--control", action="append", default=[], metavar="KIND|KIND=MODEL|MODEL",
                   help=fh("control") + " Repeat for several ControlNets" + (" (default: tile)." if stylize else "."))
    c.add_argument("--control-image", dest="control_image", action=_ControlImage, default=[], metavar="IMAGE",
                   help="control image for the --control just before it (e.g. a depth map); canny/tile derive "
                        "theirs from --content")
    c.add_argument("--control-scale", nargs="+", default=[], metavar="F", help=fh("control_scale"))
    c.add_argument("--canny-low", default=None, metavar="N", help=fh("canny_low") + " (default: 50)")
    c.add_argument("--canny-high", default=None, metavar="N", help=fh("canny_high") + " (default: 200)")
    if not stylize:
        c.add_argument("--strength", default=None, metavar="F", help=fh("strength"))
        c.add_argument("--mask", default=None, metavar="MASK", help=fh("mask"))
    c.add_argument("--content-ip-scale", default=None, metavar="F", help=fh("content_ip_scale"))
    c.add_argument("--inversion-steps", default=None, metavar="N", help=fh("inversion_steps"))
    c.add_argument("--inversion-prompt", default=None, metavar="TEXT", help=fh("inversion_prompt"))
    c.add_argument("--inversion", default=None, choices=["renoise", "ddim"], help=fh("inversion"))
    c.add_argument("--renoise-steps", default=None, metavar="N", help=fh("renoise_steps"))
    c.add_argument("--noise-regularization", action=argparse.BooleanOptionalAction, default=None,
                   help=fh("noise_regularization"))
    if not stylize:
        c.add_argument("--inpaint-style", default=None, choices=["everywhere", "mask"],
                       help=fh("inpaint_style") + " (default: everywhere)")


def _add_sampling_args(g, stylize: bool) -> None:
    from ..config import SCHEDULERS

    fh = options.field_help
    p = g.add_argument_group("prompt and sampling")
    p.add_argument("--prompt", required=True, metavar="TEXT", help=fh("prompt"))
    p.add_argument("--negative-prompt", default=None, metavar="TEXT", help=fh("negative_prompt"))
    p.add_argument("--steps", default=None, metavar="N",
                   help=fh("steps") + (" (default: 50)" if stylize else " (default: 30; plus: 50)"))
    p.add_argument("--guidance", default=None, metavar="F",
                   help=fh("guidance") + " (default: 5.0; style-aligned 10, visual-style-prompting 7, their authors')")
    p.add_argument("--seed", default=None, metavar="N", help=fh("seed"))
    p.add_argument("--width", default=None, metavar="W", help=fh("width"))
    p.add_argument("--height", default=None, metavar="H", help=fh("height"))
    p.add_argument("--num-images", default="1", metavar="N", help=fh("num_images") + " (default: 1)")
    p.add_argument("--scheduler", default=None, choices=SCHEDULERS,
                   help="sampler (default: euler, SDXL's own; plus: ddim, required)")


def _add_output_args(g) -> None:
    o = g.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="PATH",
                   help="output PNG; with --num-images N, PATH-0.png ... PATH-(N-1).png; a directory (existing, "
                        "or ending in /) gets instantstyle-SEED-I.png")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("--max-pixels", type=int, default=None,
                   help="refuse style/content/mask images with more pixels (default 40M)")
    o.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------- running


def output_names(out: str, n: int, seed: int) -> list[Path]:
    """The files ``--out`` names: PATH, PATH-0.png ... for a batch, DIR/instantstyle-SEED-I.png for a folder."""
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return [path / f"instantstyle-{seed}-{i}.png" for i in range(n)]
    if path.suffix.lower() != ".png":
        raise InstantStyleError(f"--out '{out}': outputs are PNG files; use a name ending in .png, or end it "
                                "with / for a folder")
    return [path] if n == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def output_paths(out: str, n: int, seed: int, overwrite: bool) -> list[Path]:
    """Checked output files; a folder given as ``DIR/`` that does not exist yet is created when writing."""
    from ..images import check_output_path

    paths = output_names(out, n, seed)
    if not paths[0].parent.exists() and out.endswith(("/", "\\")):
        return paths  # a new folder: nothing in it can be overwritten
    return [check_output_path(p, overwrite=overwrite) for p in paths]


def _input_files(req) -> dict[str, list[str]]:
    """The files a request reads, by flag (an output must not be one of them)."""
    return {"--style": [s for s in req.style if not s.startswith("@")], "--content": [req.content],
            "--mask": [req.mask], "--style-mask": req.style_masks, "--control-image": req.control_image}


def _check_blocks(base: str, req) -> None:
    """Resolve the block spec against the base model's UNet config (kilobytes) before loading weights."""
    from .. import blocks, models

    if req.method != "instantstyle":
        return
    try:
        config = models.load_unet_config(base)
    except InstantStyleError:
        return  # the full load reports the missing model with its fetch command
    spec = blocks.parse_spec(req.blocks) if req.blocks else blocks.preset_spec(req.mode)
    blocks.resolve_branches(blocks.discover(models.meta_unet(config)), spec, req.scale, req.layout_boost)


def request_from_args(args):
    """The flags given, as a validated ``GenerateRequest`` (unset flags take the schema's defaults)."""
    from ..config import make_request

    if args.mode is not None and args.blocks is not None:
        raise InstantStyleError("give --mode or --blocks, not both (--blocks replaces the preset)")
    seed = args.seed if args.seed is not None else str(secrets.randbelow(2**31))
    task = "plus" if args.stylize or args.mode == "plus" else getattr(args, "task", None)
    if args.mode == "plus" and getattr(args, "task", None) not in (None, "plus"):
        raise InstantStyleError(f"--mode plus means --task plus, not --task {args.task}")
    params = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, style=args.style,
        style_weights=args.style_weights, style_combine=args.style_combine, method=args.method,
        mode=args.mode if args.mode not in (None, "plus") else "style", scale=args.scale, blocks=args.blocks,
        content_prompt=args.content_prompt, content_scale=args.content_scale, layout_boost=args.layout_boost,
        composition=args.composition, composition_scale=args.composition_scale,
        negative_style=args.negative_style, negative_style_scale=args.negative_style_scale,
        style_window=args.style_window, steps=args.steps,
        guidance=args.guidance, seed=seed, width=args.width, height=args.height, num_images=args.num_images,
        scheduler=args.scheduler, task=task, content=args.content, control=args.control,
        control_image=(args.control_image + [None] * (len(args.control) - len(args.control_image))
                       if args.control_image else []),
        control_scale=args.control_scale, canny_low=args.canny_low, canny_high=args.canny_high,
        strength=getattr(args, "strength", None), mask=getattr(args, "mask", None), style_masks=args.style_masks,
        content_ip_scale=args.content_ip_scale, inversion_steps=args.inversion_steps,
        inversion_prompt=args.inversion_prompt, inversion=args.inversion, renoise_steps=args.renoise_steps,
        noise_regularization=args.noise_regularization, inpaint_style=getattr(args, "inpaint_style", None),
        **options.method_params(args),
    )
    # Unset options take the schema's defaults (which depend on the task, e.g. Plus's scale 1.2).
    req = make_request(**{k: v for k, v in params.items() if v is not None and v != []})
    if not req.style and req.method != "b-lora":
        raise InstantStyleError("no style image given; pass --style IMAGE (or --style @NAME of a saved style)")
    return req


def check_inputs(args, req) -> list[Path]:
    """Every local input and every model piece, all at once, before any model loads (preflight.py);
    returns the checked output paths."""
    from .. import preflight
    from ..embeddings import load_style
    from ..images import load_image
    from ..pipelines.inputs import precheck

    max_pixels = args.max_pixels or 40_000_000
    paths: list[Path] = []
    checks = [lambda: preflight.check_outputs_are_not_inputs(output_names(args.out, req.num_images, req.seed),
                                                             _input_files(req), flags=True),
              lambda: paths.extend(output_paths(args.out, req.num_images, req.seed, args.overwrite))]
    checks += [(lambda ref=ref: load_style(ref) if ref.startswith("@") else
                load_image(ref, what="style image", max_pixels=max_pixels)) for ref in req.style]
    checks += [(lambda path=path, what=what: load_image(path, what=what, max_pixels=max_pixels))
               for what, path in (("composition image", req.composition), ("negative style image", req.negative_style))
               if path]
    checks.append(lambda: precheck(req, args.base, max_pixels, controlnets=False))  # content, masks, control images
    needs = preflight.needs_for_model(args.base, args.adapter, args.image_encoder, controls=req.control,
                                      content_text_encoder=args.content_text_encoder)
    common.preflight(args, checks, needs, tryout=common.TRYOUT)
    _check_blocks(args.base, req)
    options.check_lora(args.base, req)
    precheck(req, args.base, max_pixels, images=False)  # each ControlNet's config against the base's UNet
    return paths


def run(args) -> int:
    # 1. Validate the request and the outputs before loading anything.
    req = request_from_args(args)
    paths = check_inputs(args, req)

    # 2. Load models, 3. generate, 4. write atomically.
    from ..images import save_png

    model = options.load_model(args, cache_dir=not args.no_cache)
    if args.max_pixels:
        model.styles.max_pixels = args.max_pixels
    images = model.generate(req)
    paths[0].parent.mkdir(parents=True, exist_ok=True)  # --out DIR/ names a folder to create
    for image, path in zip(images, paths, strict=True):
        save_png(image, path, overwrite=args.overwrite)
        print(path)
    return 0
