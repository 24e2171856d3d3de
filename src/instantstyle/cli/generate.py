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
  instantstyle generate --method b-lora --b-lora blora/ --prompt "a lighthouse" --out bl.png
  instantstyle compare --style ref.png --prompt "a lighthouse" --prompt "a cat" \\
      --reference-prompt "a watercolour harbour" --out cmp/

  # few-step models (see docs/few-step.md): a preset fills sampler, steps, guidance, spacing
  instantstyle generate --base my-lightning-finetune.safetensors --style ref.png --prompt "a cat" \\
      --sampling lightning-4step --out cat.png
  instantstyle generate --style ref.png --prompt "a cat" --scheduler euler --timestep-spacing trailing \\
      --steps 4 --guidance 0 --out cat.png
  instantstyle generate --style ref.png --prompt "a cat" --scheduler lcm --timesteps 999 749 499 249 \\
      --guidance 0 --out cat.png

  # SD1.5 (ip-adapter_sd15, its style blocks and the ViT-H text tower are its defaults; docs/families.md)
  instantstyle generate --base stable-diffusion-v1-5/stable-diffusion-v1-5 --style ref.png \\
      --prompt "a cat" --content-prompt "a dog" --out cat15.png
  instantstyle generate --base tiny-sd15 --style ref.png --prompt "a cat" --mode style+layout --out t.png

  # user LoRAs (kohya/A1111 or diffusers format; local or a Hub file), for this request only
  instantstyle generate --style ref.png --prompt "a knight" --lora ./add-detail-xl.safetensors:0.7 \\
      --lora owner/repo/pixel-art-xl.safetensors --out knight.png
  instantstyle generate --method b-lora --b-lora blora/ --lora ./character-xl.safetensors:0.8 \\
      --prompt "a knight" --out k.png

  # two references mixed 70/30, saved once and reused
  instantstyle style save watercolour a.png b.png --weights 0.7 0.3
  instantstyle generate --style @watercolour --prompt "a lighthouse" --out l.png

  # IP-Adapter Plus: 16 tokens from ViT-H patch features (the ViT-H encoder is implied; see docs/adapters.md)
  instantstyle generate --adapter h94/IP-Adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors \\
      --style ref.png --prompt "a cat" --out plus.png
  # Plus has no content subtraction: keep the reference's content out with a negative image
  instantstyle generate --adapter h94/IP-Adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors \\
      --style ref.png --negative-style dog.png --prompt "a cat" --out plus-neg.png
  # the same on the tiny models, no weights needed
  instantstyle generate --base tiny --adapter tiny-plus --style ref.png --prompt "a cat" --out tiny-plus.png
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
  # ... with the adapter its authors use (global ViT-H; the ViT-H encoder is implied)
  instantstyle stylize --adapter h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors \\
      --style ref.png --content photo.png --prompt "a house by a lake" --out f.png
"""


def register(sub) -> None:
    g = common.add_command(
        sub,
        "generate",
        run,
        help="generate images in the style of reference images",
        description="Generate images from a prompt in the style of one or more reference images; "
        "with --content, repaint a content image in that style (ControlNet, img2img, "
        "inpainting, InstantStyle-Plus).",
        epilog=EXAMPLES + STYLIZE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


# Fields stylize (InstantStyle-Plus, task fixed) has no flag for: the task and its siblings' inputs,
# and the few-step sampling fields (Plus retraces its DDIM inversion's timesteps).
NOT_FOR_STYLIZE = (
    "task",
    "strength",
    "mask",
    "inpaint_style",
    "sampling",
    "timestep_spacing",
    "timesteps",
    "eta",
)


def add_generate_args(g: argparse.ArgumentParser, *, stylize: bool = False) -> None:
    """Every flag of ``generate`` (``stylize=False``) or ``stylize``: one per ``GenerateRequest``
    field (names, help, choices, ranges and defaults from the schema), then output and models."""
    from ..config import GROUPS, MODES, GenerateRequest
    from ..schema_flags import add_flags, meta

    groups = {key: g.add_argument_group(title) for key, title in GROUPS.items()}
    fields = GenerateRequest.model_fields
    names = [n for n in fields if not (stylize and n in NOT_FOR_STYLIZE)]
    overrides = {
        "prompt": {"required": True},
        "content": {"required": stylize},
        "control_image": {"action": _ControlImage},
        "method": {"help": options.method_help()},
    }
    if not stylize:  # --mode plus is --task plus
        overrides["mode"] = {
            "choices": (*MODES, "plus"),
            "help": fields["mode"].description + " plus = --task plus. (default: style)",
        }
    add_flags(
        g,
        GenerateRequest,
        names,
        unset=None,
        group=lambda n: groups[meta(fields[n])["group"]],
        note=lambda n: default_note(n, stylize),
        overrides=overrides,
    )
    _add_output_args(g)
    options.add_model_args(g)
    g.set_defaults(stylize=stylize)


def default_note(name: str, stylize: bool) -> str:
    """The default a flag shows: the field's, then the task's (plus) and the methods' where they differ."""
    from ..config import METHOD_DEFAULTS, default_for

    def shown(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, list | tuple):
            return (":" if isinstance(value, tuple) else ", ").join(shown(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    base = default_for(name, task="plus" if stylize else None)
    parts = [shown(base)] if base not in (None, [], "") else []
    if not stylize:
        plus = default_for(name, task="plus")
        parts += [f"plus: {shown(plus)}"] if plus != base and name != "negative_prompt" else []
        parts += (
            [
                ", ".join(
                    f"{m} {shown(default_for(name, method=m))}"
                    for m in METHOD_DEFAULTS
                    if default_for(name, method=m) != base
                )
            ]
            if name != "negative_prompt"
            else []
        )
    parts = [p for p in parts if p]
    return f" (default: {'; '.join(parts)})" if parts else ""


def _add_output_args(g) -> None:
    o = g.add_argument_group("output")
    o.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output PNG; with --num-images N, PATH-0.png ... PATH-(N-1).png; a directory (existing, "
        "or ending in /) gets instantstyle-SEED-I.png",
    )
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse style/content/mask images with more pixels (default 40M)",
    )
    o.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------- running


def output_names(out: str, n: int, seed: int) -> list[Path]:
    """The files ``--out`` names: PATH, PATH-0.png ... for a batch, DIR/instantstyle-SEED-I.png for a folder."""
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return [path / f"instantstyle-{seed}-{i}.png" for i in range(n)]
    if path.suffix.lower() != ".png":
        raise InstantStyleError(
            f"--out '{out}': outputs are PNG files; use a name ending in .png, or end it with / for a folder"
        )
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
    return {
        "--style": [s for s in req.style if not s.startswith("@")],
        "--content": [req.content],
        "--mask": [req.mask],
        "--style-mask": req.style_masks,
        "--control-image": req.control_image,
    }


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
    """The flags given, as a validated ``GenerateRequest`` (unset flags take the schema's defaults,
    and its rules, e.g. --mode with --blocks, refuse what does not go together)."""
    from ..config import GenerateRequest, make_request
    from ..schema_flags import given

    params = given(args, GenerateRequest)
    if args.stylize or args.mode == "plus":
        if args.mode == "plus" and params.get("task") not in (None, "plus"):
            raise InstantStyleError(f"--mode plus means --task plus, not --task {args.task}")
        params["task"] = "plus"
        if args.mode == "plus":
            params["mode"] = (
                "style"  # --mode plus is a task; given with --blocks, the schema refuses the pair
            )
    params.setdefault("seed", str(secrets.randbelow(2**31)))
    if params.get("control_image"):  # --control-image follows its --control; the others derive theirs
        params["control_image"] += [None] * (len(args.control) - len(params["control_image"]))
    req = make_request(**params)
    if not req.style and req.method != "b-lora":
        raise InstantStyleError(
            "no style image given; pass --style IMAGE (or --style @NAME of a saved style)"
        )
    return req


def check_inputs(args, req) -> list[Path]:
    """Every local input and every model piece, all at once, before any model loads (preflight.py);
    returns the checked output paths."""
    from .. import models, preflight
    from ..embeddings import load_style
    from ..images import load_image
    from ..pipelines.inputs import precheck

    max_pixels = args.max_pixels or 40_000_000
    paths: list[Path] = []
    checks = [
        lambda: preflight.check_outputs_are_not_inputs(
            output_names(args.out, req.num_images, req.seed), _input_files(req), flags=True
        ),
        lambda: paths.extend(output_paths(args.out, req.num_images, req.seed, args.overwrite)),
    ]
    checks += [
        (
            lambda ref=ref: (
                load_style(ref)
                if ref.startswith("@")
                else load_image(ref, what="style image", max_pixels=max_pixels)
            )
        )
        for ref in req.style
    ]
    checks += [
        (lambda path=path, what=what: load_image(path, what=what, max_pixels=max_pixels))
        for what, path in (
            ("composition image", req.composition),
            ("negative style image", req.negative_style),
        )
        if path
    ]
    checks.append(
        lambda: precheck(req, args.base, max_pixels, controlnets=False)
    )  # content, masks, control images
    if req.loras:  # each --lora file there (or its fetch command) and a LoRA; its family once the model loads
        from ..loras import precheck as lora_precheck

        checks.append(lambda: lora_precheck(req.loras))
    needs = preflight.needs_for_model(
        args.base,
        args.adapter,
        args.image_encoder,
        controls=req.control,
        # SD1.5 subtracts with the ViT-H text tower, loaded at the first --content-prompt: check it now
        content_text_encoder=args.content_text_encoder
        or (models.default_content_text_encoder(args.base) if req.content_prompt else None),
    )
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
