"""Command line: ``instantstyle generate | stylize | blocks | style | serve | compare | train-blora | make-tiny | train-adapter | eval | probe-blocks | download``.

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

def _field_help(name: str, default: bool = False) -> str:
    """The schema's description of a field, with its default when it has a simple one."""
    from .config import GenerateRequest

    field = GenerateRequest.model_fields[name]
    value = field.get_default(call_default_factory=True)
    shown = "" if not default or value in (None, [], "") else f" (default: {value})"
    return (field.description or "") + shown


def _add_model_args(p: argparse.ArgumentParser, *, encoder_only: bool = False) -> None:
    from . import models

    g = p.add_argument_group("models (local path, Hub 'owner/repo[/path]', or 'tiny')")
    if not encoder_only:
        g.add_argument("--base", default=models.DEFAULT_BASE,
                       help="SDXL base model: a diffusers directory or Hub id, or one .safetensors checkpoint "
                            "(an SDXL finetune from Civitai, local or 'owner/repo/file.safetensors') "
                            "(default: %(default)s)")
        g.add_argument("--base-config", default=None,
                       help="diffusers configs for a single-file --base (Hub id or directory; configs only, a few KB; "
                            "default: stabilityai/stable-diffusion-xl-base-1.0)")
        g.add_argument("--vae", default=None,
                       help="replace the base's VAE: a diffusers directory, Hub id ('owner/repo[/subfolder]') or one "
                            ".safetensors file. With fp16 (the CUDA default) the stock SDXL VAE overflows and diffusers "
                            "decodes in fp32 (slower, more memory); madebyollin/sdxl-vae-fp16-fix decodes in fp16 "
                            "with nearly the same picture")
        g.add_argument("--adapter", default=None,
                       help=f"IP-Adapter .safetensors/.bin in the h94 layout (default: {models.DEFAULT_ADAPTER})")
        g.add_argument("--variant", default=None, help="weights variant to fetch, e.g. fp16 (halves the download)")
        g.add_argument("--content-text-encoder", default=None,
                       help="CLIPTextModelWithProjection for content subtraction when the image encoder's space "
                            "is not text_encoder_2's (e.g. ViT-H adapters)")
    g.add_argument("--image-encoder", default=None,
                   help=f"CLIPVisionModelWithProjection directory (default: {models.DEFAULT_IMAGE_ENCODER})")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=DTYPES,
                   help="default: fp16 on cuda/mps, fp32 on cpu")
    if not encoder_only:  # same names as instantstyle.fastpath.SPEEDS / MEMORY_MODES (checked by a test)
        g.add_argument("--speed", default="auto",
                       choices=["auto", "plain", "exact", "graphs", "fast", "max", "max-tuned", "max-autotune", "fp8",
                                "fp8-max", "cfg-trunc", "deepcache", "turbo"],
                       help="fast path (see docs/performance.md): auto = graphs on CUDA for generate/stylize/"
                            "compare, max for serve, exact on CPU; plain = stock diffusers; exact = image branch only "
                            "in active blocks; graphs = exact + CUDA graphs, no compilation (0.69x stock diffusers' "
                            "time on an H200); max = the whole UNet compiled + CUDA graphs (0.56x; ~90 s to compile "
                            "on first use); fast = regional compile. Not yet measured on a GPU: max-tuned = max + "
                            "K/V once per call, no work in inactive IP layers, bf16 compiled VAE decode, tuned "
                            "Inductor (same picture); max-autotune = max-tuned with autotuned kernels, for serve "
                            "(minutes to compile once; see --compile-cache). Approximations, opt-in (change the "
                            "picture slightly): fp8 (Hopper/Ada), fp8-max (row-wise fp8 inside the compiled graph), "
                            "cfg-trunc (last 40%% of the steps without CFG), deepcache (deep blocks every other "
                            "step), turbo (fp8-max + deepcache) (default: auto)")
        g.add_argument("--cfg-truncation", type=float, default=None, metavar="FRACTION",
                       help="approximation: the last FRACTION of the steps without the unconditional half (e.g. 0.4; "
                            "text-to-image only); adds to any --speed, 0 turns it off (default: the speed's, 0 "
                            "except cfg-trunc's 0.4)")
        g.add_argument("--deepcache", type=int, default=None, metavar="N", dest="deepcache_interval",
                       help="approximation: the deep UNet blocks every N-th step only, the steps between reuse their "
                            "features (DeepCache; 2 = every other step); 0 turns it off (default: the speed's)")
        g.add_argument("--compile-cache", default=None, metavar="DIR",
                       help="keep torch.compile's generated code and autotuning results in DIR, so a restart does not "
                            "compile again (default: torch's, $TORCHINDUCTOR_CACHE_DIR or a temp folder)")
        g.add_argument("--memory", default="auto", choices=["auto", "normal", "balanced", "low", "lowest"],
                       help="GPU memory layout (peaks at 1024 px on SDXL): normal ~16-18 GiB; balanced = text/image "
                            "encoders streamed from the CPU, ~13 GiB, same speed; low = model CPU offload + 512 px "
                            "VAE tiles, ~7 GiB (Plus ~12); lowest = every model but the VAE streamed layer by layer, "
                            "~1.6 GiB (Plus ~3.5), ~4x slower; auto picks by the card's size (default: auto)")


def _speed_args(args) -> dict:
    """``--speed`` and its companion flags, as ``InstantStyle.from_pretrained`` takes them."""
    return {"speed": args.speed, "cfg_truncation": args.cfg_truncation, "deepcache_interval": args.deepcache_interval,
            "compile_cache": args.compile_cache}


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


def _add_generate_args(g: argparse.ArgumentParser, modes, schedulers, *, stylize: bool = False) -> None:
    from .config import TASKS

    s = g.add_argument_group("style")
    s.add_argument("--style", action="append", default=[], metavar="IMG|@NAME",
                   help="style reference image, or @name of a saved style; repeat for several")
    s.add_argument("--style-weights", nargs="+", default=None, metavar="W", help=_field_help("style_weights"))
    s.add_argument("--style-combine", default="mean", choices=["mean", "concat"], help=_field_help("style_combine", default=True))
    s.add_argument("--style-mask", dest="style_masks", action="append", default=[], metavar="MASK",
                   help=_field_help("style_masks") + " Repeat once per --style, in the same order.")
    mode_choices = modes if stylize else (*modes, "plus")
    s.add_argument("--mode", default=None, choices=mode_choices,
                   help=_field_help("mode") + (" plus = --task plus." if not stylize else "")
                   + " (default: style)")
    s.add_argument("--scale", default=None, help=_field_help("scale") + (" (default: 1.2)" if stylize else
                                                                          " (default: 1.0; plus: 1.2)"))
    s.add_argument("--blocks", default=None, metavar="SPEC", help=_field_help("blocks") + " See `instantstyle blocks`.")
    s.add_argument("--content-prompt", default=None, metavar="TEXT", help=_field_help("content_prompt"))
    s.add_argument("--content-scale", default=None, metavar="F", help=_field_help("content_scale"))
    lk = g.add_argument_group("leakage controls (see docs/leakage.md)")
    lk.add_argument("--layout-boost", default=None, metavar="F", help=_field_help("layout_boost"))
    lk.add_argument("--composition", default=None, metavar="IMAGE", help=_field_help("composition"))
    lk.add_argument("--composition-scale", default=None, metavar="F", help=_field_help("composition_scale"))
    lk.add_argument("--negative-style", default=None, metavar="IMAGE", help=_field_help("negative_style"))
    lk.add_argument("--negative-style-scale", default=None, metavar="F", help=_field_help("negative_style_scale"))
    lk.add_argument("--style-window", default=None, metavar="START:END",
                    help=_field_help("style_window") + " (default: 0:1)")
    s.add_argument("--method", default="instantstyle", help=_method_help())
    _add_method_args(g)
    c = g.add_argument_group("content image (ControlNet, img2img, inpainting, InstantStyle-Plus)")
    c.add_argument("--content", default=None, required=stylize, metavar="IMAGE", help=_field_help("content"))
    if not stylize:
        c.add_argument("--task", default=None, choices=TASKS, help=_field_help("task"))
    c.add_argument("--control", action="append", default=[], metavar="KIND|KIND=MODEL|MODEL",
                   help=_field_help("control") + " Repeat for several ControlNets"
                   + (" (default: tile)." if stylize else "."))
    c.add_argument("--control-image", dest="control_image", action=_ControlImage, default=[], metavar="IMAGE",
                   help="control image for the --control just before it (e.g. a depth map); canny/tile derive "
                        "theirs from --content")
    c.add_argument("--control-scale", nargs="+", default=[], metavar="F", help=_field_help("control_scale"))
    c.add_argument("--canny-low", default=None, metavar="N", help=_field_help("canny_low") + " (default: 50)")
    c.add_argument("--canny-high", default=None, metavar="N", help=_field_help("canny_high") + " (default: 200)")
    if not stylize:
        c.add_argument("--strength", default=None, metavar="F", help=_field_help("strength"))
        c.add_argument("--mask", default=None, metavar="MASK", help=_field_help("mask"))
    c.add_argument("--content-ip-scale", default=None, metavar="F", help=_field_help("content_ip_scale"))
    c.add_argument("--inversion-steps", default=None, metavar="N", help=_field_help("inversion_steps"))
    c.add_argument("--inversion-prompt", default=None, metavar="TEXT", help=_field_help("inversion_prompt"))
    c.add_argument("--inversion", default=None, choices=["renoise", "ddim"], help=_field_help("inversion"))
    c.add_argument("--renoise-steps", default=None, metavar="N", help=_field_help("renoise_steps"))
    c.add_argument("--noise-regularization", action=argparse.BooleanOptionalAction, default=None,
                   help=_field_help("noise_regularization"))
    if not stylize:
        c.add_argument("--inpaint-style", default=None, choices=["everywhere", "mask"],
                       help=_field_help("inpaint_style") + " (default: everywhere)")
    p = g.add_argument_group("prompt and sampling")
    p.add_argument("--prompt", required=True, metavar="TEXT", help=_field_help("prompt"))
    p.add_argument("--negative-prompt", default=None, metavar="TEXT", help=_field_help("negative_prompt"))
    p.add_argument("--steps", default=None, metavar="N",
                   help=_field_help("steps") + (" (default: 50)" if stylize else " (default: 30; plus: 50)"))
    p.add_argument("--guidance", default=None, metavar="F",
                   help=_field_help("guidance") + " (default: 5.0; style-aligned 10, visual-style-prompting 7, "
                                                  "their authors')")
    p.add_argument("--seed", default=None, metavar="N", help=_field_help("seed"))
    p.add_argument("--width", default=None, metavar="W", help=_field_help("width"))
    p.add_argument("--height", default=None, metavar="H", help=_field_help("height"))
    p.add_argument("--num-images", default="1", metavar="N", help=_field_help("num_images") + " (default: 1)")
    p.add_argument("--scheduler", default=None, choices=schedulers,
                   help="sampler (default: euler, SDXL's own; plus: ddim, required)")
    o = g.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="PATH",
                   help="output PNG; with --num-images N, PATH-0.png ... PATH-(N-1).png; a directory (existing, "
                        "or ending in /) gets instantstyle-SEED-I.png")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("--max-pixels", type=int, default=None,
                   help="refuse style/content/mask images with more pixels (default 40M)")
    o.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(g)
    g.set_defaults(stylize=stylize)


def _method_help() -> str:
    from .methods import METHODS

    return "generation method: " + "; ".join(f"{m.name} = {m.summary} ({m.paper})" for m in METHODS.values()) + \
        " (default: instantstyle)"


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """Options of the baselines (each is refused for a method that does not read it)."""
    m = p.add_argument_group("baseline methods (--method style-aligned | visual-style-prompting | b-lora)")
    m.add_argument("--reference-prompt", default=None, metavar="TEXT", help=_field_help("reference_prompt"))
    m.add_argument("--attention-layers", default=None, metavar="NAMES", help=_field_help("attention_layers"))
    m.add_argument("--share-group-norm", action=argparse.BooleanOptionalAction, default=None,
                   help=_field_help("share_group_norm") + " (default: on)")
    m.add_argument("--shared-score-shift", default=None, metavar="F", help=_field_help("shared_score_shift"))
    m.add_argument("--inversion-offset", default=None, metavar="N", help=_field_help("inversion_offset"))
    m.add_argument("--style-description", default=None, metavar="TEXT", help=_field_help("style_description"))
    m.add_argument("--swap-start", default=None, metavar="F", help=_field_help("swap_start"))
    m.add_argument("--swap-end", default=None, metavar="F", help=_field_help("swap_end"))
    m.add_argument("--no-color-calibration", dest="color_calibration", action="store_false", default=None,
                   help="visual-style-prompting: skip the colour calibration of x0")
    m.add_argument("--lora", default=None, metavar="DIR", help=_field_help("lora"))
    m.add_argument("--lora-scale", default=None, metavar="F", help=_field_help("lora_scale"))


METHOD_FIELDS = ("reference_prompt", "attention_layers", "share_group_norm", "shared_score_shift",
                 "inversion_offset", "style_description", "swap_start", "swap_end", "color_calibration", "lora",
                 "lora_scale")


def _method_params(args) -> dict:
    """The baseline options the user gave (unset ones keep the request's defaults)."""
    return {f: getattr(args, f) for f in METHOD_FIELDS if getattr(args, f, None) is not None}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem, a "did you mean" for a misspelt choice, where to
    look; no usage dump (``--help`` shows it)."""

    def error(self, message: str):
        import difflib
        import re

        hint = ""
        match = re.search(r"invalid choice: '?([^' ]+)'? \(choose from (.*)\)", message)
        if match:
            choices = [c.strip().strip("'\"") for c in match.group(2).split(",")]
            close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.5)
            message = f"{message.split(' (choose from')[0]}; choose from {', '.join(choices)}"
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.exit(2, f"{self.prog.split()[0]}: error: {message}{hint}; see `{self.prog} --help`\n")


DTYPES = ["fp16", "bf16", "fp32", "float16", "bfloat16", "float32"]  # models.device_and_dtype reads each


def build_parser() -> argparse.ArgumentParser:
    from .config import MODES, SCHEDULERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = _Parser(
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

    # generate / stylize -----------------------------------------------------------
    g = sub.add_parser("generate", parents=[common], help="generate images in the style of reference images",
                       description="Generate images from a prompt in the style of one or more reference images; "
                                   "with --content, repaint a content image in that style (ControlNet, img2img, "
                                   "inpainting, InstantStyle-Plus).",
                       epilog=EXAMPLES + STYLIZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_generate_args(g, MODES, SCHEDULERS)
    z = sub.add_parser("stylize", parents=[common], help="InstantStyle-Plus: repaint --content in the style of --style",
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
                       epilog=STYLIZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_generate_args(z, MODES, SCHEDULERS, stylize=True)

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
    save.add_argument("--base", default=None,
                      help="tiny: encode with the tiny model's image encoder (as generate --base tiny); otherwise "
                           "the styles depend only on --image-encoder")
    _add_model_args(save, encoder_only=True)
    ls = st_sub.add_parser("list", parents=[common], help="list saved styles")
    ls.add_argument("--styles-dir", default=None)
    show = st_sub.add_parser("show", parents=[common], help="show a saved style's metadata")
    show.add_argument("name")
    show.add_argument("--styles-dir", default=None)
    rm = st_sub.add_parser("rm", parents=[common], help="delete a saved style")
    rm.add_argument("name")
    rm.add_argument("--styles-dir", default=None)

    # serve -----------------------------------------------------------------------
    from .server.service import Limits

    lim = Limits()
    sv = sub.add_parser(
        "serve", parents=[common], help="web UI + HTTP API: models loaded once, a bounded job queue",
        description="Serve the web UI (at /ui) and the HTTP API (at /v1, documented at /docs) from one process. "
                    "Models load once; one worker per device runs the jobs from a bounded queue (a full queue "
                    "answers 429 with Retry-After). Needs the 'serve' extra: pip install 'instantstyle[serve]'.",
        epilog="examples:\n  instantstyle serve --base tiny          # try it without weights (images are noise)\n"
               "  instantstyle serve --api-key \"$(openssl rand -hex 16)\" --host 0.0.0.0\n"
               "  curl -F images=@ref.png -F 'params={\"prompt\": \"a cat\", \"seed\": 1}' \\\n"
               "       'http://127.0.0.1:7860/v1/generate?wait=true'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    n = sv.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes it: set an API key)")
    n.add_argument("--port", type=int, default=7860, help="default: %(default)s")
    n.add_argument("--api-key", default=None,
                   help="require this key on every API call ('Authorization: Bearer KEY' or 'X-API-Key: KEY') and "
                        "as the UI password (default: $INSTANTSTYLE_API_KEY, else none)")
    n.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the server answers to, besides localhost and the --host address (behind a "
                        "reverse proxy: its public name); repeatable; '*' answers to any (default: "
                        "$INSTANTSTYLE_ALLOWED_HOSTS, comma-separated)")
    n.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example.com) allowed to call the API from its pages (CORS); "
                        "repeatable; default none: cross-origin requests that change state are refused")
    n.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    n.add_argument("--no-warmup", action="store_true",
                   help="skip the start-up warm-up generation (with a compiling --speed, such as the default max "
                        "on CUDA, the warm-up compiles and captures before the first request instead of during it)")
    q = sv.add_argument_group("queue and limits (per request)")
    q.add_argument("--queue-size", type=int, default=8, help="jobs waiting at most; more get 429 (default: %(default)s)")
    q.add_argument("--max-upload-bytes", type=int, default=lim.max_upload_bytes,
                   help="bytes per uploaded image (default: %(default)s)")
    q.add_argument("--max-pixels", type=int, default=lim.max_pixels,
                   help="pixels per uploaded image (default: %(default)s)")
    q.add_argument("--max-prompt-length", type=int, default=lim.max_prompt_length,
                   help="characters per prompt (default: %(default)s)")
    q.add_argument("--max-style-images", type=int, default=lim.max_style_images,
                   help="uploaded images + saved styles per request (default: %(default)s)")
    q.add_argument("--max-images", type=int, default=lim.max_num_images,
                   help="generated images per request (default: %(default)s)")
    q.add_argument("--min-size", type=int, default=lim.min_size, help="smallest width/height (default: %(default)s)")
    q.add_argument("--max-size", type=int, default=lim.max_size, help="largest width/height (default: %(default)s)")
    q.add_argument("--max-steps", type=int, default=lim.max_steps, help="most denoising steps (default: %(default)s)")
    q.add_argument("--max-cost", type=float, default=lim.max_cost,
                   help="most steps x width x height x images per request, counted in steps of a 1024x1024 image "
                        "(default: %(default)s = 4 images of 1024x1024 at 50 steps)")
    q.add_argument("--job-timeout", type=float, default=lim.job_timeout_s, metavar="S",
                   help="a running job past S seconds stops at its next step and fails (default: %(default)s)")
    q.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, queued jobs are answered as cancelled and running ones get S seconds "
                        "before they stop (default: %(default)s)")
    q.add_argument("--styles-dir", default=None,
                   help="saved styles (default: $INSTANTSTYLE_STYLES or ~/.local/share/instantstyle/styles)")
    q.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    q.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads per worker (default: torch's; 1 is often fastest for small CPU models)")
    q.add_argument("--controlnet", action="append", default=[], metavar="NAME=REF",
                   help="allow requests to use the ControlNet REF (local diffusers dir or Hub id, loaded at start) "
                        "as control NAME (fed an uploaded control image) or canny=NAME / tile=NAME; repeatable. "
                        "canny and tile (default ControlNets) are always allowed; a request never names a path")
    _add_model_args(sv)
    sv._option_string_actions["--device"].help = (
        "one worker per device, comma-separated: cuda:0,cuda:1 loads the models on each (default: cuda if available)")

    # compare ---------------------------------------------------------------------
    c = sub.add_parser("compare", parents=[common], help="run several methods side by side and write a labelled grid",
                       description="Run every method with the same seed and settings on one style image and one "
                                   "or more prompts. Writes DIR/grid.png (a column per method, a row per prompt), "
                                   "DIR/singles/METHOD-I.png, DIR/report.json and DIR/report.md (seconds per "
                                   "image, peak memory).",
                       epilog="example:\n  instantstyle compare --style ref.png --prompt 'a lighthouse' --prompt "
                              "'a cat' \\\n      --reference-prompt 'a watercolour harbour' --seed 42 --out cmp/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--style", required=True, metavar="IMG", help="the style image (one)")
    c.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several rows")
    c.add_argument("--methods", default=None, metavar="A,B,...",
                   help="comma-separated (default: instantstyle,ip-adapter,style-aligned,visual-style-prompting, "
                        "plus b-lora when --lora is given)")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    cs = c.add_argument_group("settings shared by every method")
    for flag, field in (("--negative-prompt", "negative_prompt"), ("--steps", "steps"), ("--guidance", "guidance"),
                        ("--seed", "seed"), ("--width", "width"), ("--height", "height")):
        cs.add_argument(flag, default=None, help=_field_help(field))
    ci = c.add_argument_group("instantstyle / ip-adapter options")
    ci.add_argument("--scale", default=None, help=_field_help("scale"))
    ci.add_argument("--content-prompt", default=None, metavar="TEXT", help=_field_help("content_prompt"))
    ci.add_argument("--content-scale", default=None, metavar="F", help=_field_help("content_scale"))
    _add_method_args(c)
    _add_model_args(c)

    # train-blora -----------------------------------------------------------------
    tb = sub.add_parser("train-blora", parents=[common], help="train a B-LoRA on one style image",
                        description="Train B-LoRA (arXiv 2403.14572) on one image: LoRA on q/k/v/out of both "
                                    "attentions in the content and style blocks (up_blocks.0.attentions.0 and .1), "
                                    "prompt 'A [v]', AdamW (weight decay 1e-4), constant learning rate, gradient "
                                    "clipping 1.0; the image keeps its aspect ratio (short side = --resolution). "
                                    "An fp16 base (the CUDA default) trains with loss scaling. Use it with `instantstyle "
                                    "generate --method b-lora --lora DIR`. About 10 minutes on an A100 for 1000 "
                                    "steps at 1024 px (paper).",
                        epilog="example:\n  instantstyle train-blora --image ref.png --out blora/\n"
                               "  instantstyle train-blora --image ref.png --out blora/ --steps 1500 --resume",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tb.add_argument("--image", required=True, metavar="IMG", help="the style image")
    tb.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty, unless --resume)")
    tb.add_argument("--steps", type=int, default=1000, help="training steps (default: %(default)s, the paper's)")
    tb.add_argument("--rank", type=int, default=64, help="LoRA rank (default: %(default)s, the paper's)")
    tb.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default: %(default)s)")
    tb.add_argument("--weight-decay", type=float, default=1e-4,
                    help="AdamW weight decay (default: %(default)s, the authors')")
    tb.add_argument("--max-grad-norm", type=float, default=1.0,
                    help="clip the gradient norm to this, 0 = off (default: %(default)s, the authors')")
    tb.add_argument("--resolution", type=int, default=None,
                    help="short side of the training image in pixels, aspect ratio kept (default: the model's "
                         "native size, 1024 for SDXL)")
    tb.add_argument("--seed", type=int, default=0, help="seed for noise and timesteps (default: %(default)s)")
    tb.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                    help="save DIR/checkpoint.pt every N steps (default: %(default)s)")
    tb.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (same image and settings)")
    tb.add_argument("--quiet", action="store_true", help="no progress bar")
    tb.add_argument("--base", default=None, help="SDXL base model (default: stabilityai/stable-diffusion-xl-base-1.0)")
    tb.add_argument("--variant", default=None, help="weights variant to fetch, e.g. fp16")
    tb.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    tb.add_argument("--dtype", default=None, choices=DTYPES,
                    help="base weights dtype (default: fp16 on cuda/mps, fp32 on cpu); LoRA weights train in fp32; "
                         "fp16 scales the loss (torch.amp.GradScaler)")

    # make-tiny -------------------------------------------------------------------
    t = sub.add_parser("make-tiny", parents=[common], help="write the tiny random-weight test model to DIR",
                       description="Write a tiny random-weight SDXL (real block structure), image encoder and "
                                   "IP-Adapter in the standard on-disk layouts. Its images are noise.")
    t.add_argument("dir")

    # train-adapter ---------------------------------------------------------------
    _add_train_parser(sub, common)

    # eval, probe-blocks (instantstyle.eval_cli) -------------------------------------
    from .eval_cli import add_metric_args, add_parsers

    add_metric_args(c, with_metrics_flag=True)  # compare --metrics
    add_parsers(sub, common, _add_model_args)

    # download ----------------------------------------------------------------------
    from .cli_download import add_parser as add_download_parser

    add_download_parser(sub, common)
    return parser


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


def _add_train_parser(sub, common) -> None:
    from .training.config import add_arguments

    tr = sub.add_parser(
        "train-adapter", parents=[common], help="train an IP-Adapter on chosen blocks (style blocks by default)",
        description="Train an IP-Adapter (image projection + to_k_ip/to_v_ip of the chosen blocks only; UNet, text "
                    "encoders, VAE and image encoder frozen) on image-caption pairs, with accelerate. Blocks outside "
                    "--blocks get no IP weights (zeros in the saved h94-layout file). See docs/training.md.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(tr)


# ---------------------------------------------------------------------- commands


def _output_names(out: str, n: int, seed: int) -> list[Path]:
    """The files ``--out`` names: PATH, PATH-0.png ... for a batch, DIR/instantstyle-SEED-I.png for a folder."""
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return [path / f"instantstyle-{seed}-{i}.png" for i in range(n)]
    if path.suffix.lower() != ".png":
        raise InstantStyleError(f"--out '{out}': outputs are PNG files; use a name ending in .png, or end it "
                                "with / for a folder")
    return [path] if n == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def _output_paths(out: str, n: int, seed: int, overwrite: bool) -> list[Path]:
    """Checked output files; a folder given as ``DIR/`` that does not exist yet is created when writing."""
    from .images import check_output_path

    paths = _output_names(out, n, seed)
    if not paths[0].parent.exists() and out.endswith(("/", "\\")):
        return paths  # a new folder: nothing in it can be overwritten
    return [check_output_path(p, overwrite=overwrite) for p in paths]


TRYOUT = "or try the commands without weights first: add --base tiny (a random-weight model; its images are noise)"


def _input_files(req) -> dict[str, list[str]]:
    """The files a request reads, by flag (an output must not be one of them)."""
    return {"--style": [s for s in req.style if not s.startswith("@")], "--content": [req.content],
            "--mask": [req.mask], "--style-mask": req.style_masks, "--control-image": req.control_image}


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
    blocks.resolve_branches(blocks.discover(models.meta_unet(config)), spec, req.scale, req.layout_boost)


def _check_lora(base: str, req) -> None:
    """A B-LoRA directory must exist and match the base's UNet architecture (read from its config)."""
    from . import models

    if not req.lora:
        return
    from .methods.b_lora import read_info

    try:
        if base == models.TINY:
            from .testing.tiny import tiny_unet_config

            config = tiny_unet_config()
        else:
            config = models.load_unet_config(base)
    except InstantStyleError:
        config = None  # the full load reports the missing model
    read_info(req.lora, config)


def _quiet_libraries(load: bool = False) -> None:
    """Library chatter (deprecation notes, backend fallbacks) is not for CLI users; --debug keeps it.

    Environment and ``logging`` settings only, unless ``load``: importing diffusers takes seconds,
    and the pre-flight must answer before that (``_preflight`` calls this again with ``load``).
    """
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when the libraries are imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        if load or module in sys.modules:
            try:
                __import__(module, fromlist=["set_verbosity_error"]).set_verbosity_error()
            except ImportError:
                pass


def _no_progress_bars(load: bool = False) -> None:
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        if load or module in sys.modules:
            try:
                __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
            except (ImportError, AttributeError):
                pass


def _preflight(args, checks=(), needs=(), *, tryout: str | None = None) -> None:
    """``preflight.run``, then the library settings that need the libraries imported."""
    from . import preflight

    preflight.run(checks, needs, tryout=tryout)
    if not args.debug:
        _quiet_libraries(load=True)
    if getattr(args, "quiet", False):
        _no_progress_bars(load=True)


def _one_line_warnings() -> None:
    """Our own warnings (e.g. a prompt that will be cut) as ``instantstyle: warning: ...``."""
    import warnings

    from .errors import InstantStyleWarning

    default = warnings.showwarning
    if getattr(default, "instantstyle", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InstantStyleWarning):
            print(f"instantstyle: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.instantstyle = True
    warnings.showwarning = show


def cmd_generate(args) -> int:
    from .config import make_request

    # 1. Validate the request and the outputs before loading anything.
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
        **_method_params(args),
    )
    # Unset options take the schema's defaults (which depend on the task, e.g. Plus's scale 1.2).
    req = make_request(**{k: v for k, v in params.items() if v is not None and v != []})
    if not req.style and req.method != "b-lora":
        raise InstantStyleError("no style image given; pass --style IMAGE (or --style @NAME of a saved style)")
    # Every local input and every model piece, all at once, before any model loads (preflight.py).
    from . import preflight
    from .embeddings import load_style
    from .images import load_image
    from .pipelines.stylize import precheck

    max_pixels = args.max_pixels or 40_000_000
    paths: list[Path] = []
    checks = [lambda: preflight.check_outputs_are_not_inputs(_output_names(args.out, req.num_images, req.seed),
                                                             _input_files(req), flags=True),
              lambda: paths.extend(_output_paths(args.out, req.num_images, req.seed, args.overwrite))]
    checks += [(lambda ref=ref: load_style(ref) if ref.startswith("@") else
                load_image(ref, what="style image", max_pixels=max_pixels)) for ref in req.style]
    checks += [(lambda path=path, what=what: load_image(path, what=what, max_pixels=max_pixels))
               for what, path in (("composition image", req.composition), ("negative style image", req.negative_style))
               if path]
    checks.append(lambda: precheck(req, args.base, max_pixels, controlnets=False))  # content, masks, control images
    needs = preflight.needs_for_model(args.base, args.adapter, args.image_encoder, controls=req.control,
                                      content_text_encoder=args.content_text_encoder)
    _preflight(args, checks, needs, tryout=TRYOUT)
    _check_blocks(args.base, req)
    _check_lora(args.base, req)
    precheck(req, args.base, max_pixels, images=False)  # each ControlNet's config against the base's UNet

    # 2. Load models, 3. generate, 4. write atomically.
    from .images import save_png
    from .pipeline import InstantStyle

    model = InstantStyle.from_pretrained(
        args.base, args.adapter, args.image_encoder, device=args.device, dtype=args.dtype, variant=args.variant,
        content_text_encoder=args.content_text_encoder, cache_dir=not args.no_cache, progress=not args.quiet,
        memory=args.memory, **_speed_args(args),
        vae=args.vae, base_config=args.base_config,
    )
    if args.max_pixels:
        model.styles.max_pixels = args.max_pixels
    images = model.generate(req)
    paths[0].parent.mkdir(parents=True, exist_ok=True)  # --out DIR/ names a folder to create
    for image, path in zip(images, paths, strict=True):
        save_png(image, path, overwrite=args.overwrite)
        print(path)
    return 0


def cmd_blocks(args) -> int:
    from . import blocks, models, preflight

    base = args.base or models.DEFAULT_BASE
    _preflight(args, needs=[preflight.Need("base model", base, "unet-config")], tryout=TRYOUT)
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
    from . import models, preflight
    from .images import load_image

    embeddings.style_path(args.name, directory)  # validate the name before loading the encoder
    weights = None
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights]
        except ValueError:
            raise InstantStyleError(f"--weights {args.weights}: weights must be numbers") from None
    spec = args.image_encoder or (models.TINY if args.base == models.TINY else models.DEFAULT_IMAGE_ENCODER)
    _preflight(args, [lambda: [load_image(p, what="style image") for p in args.images]],
               preflight.needs_for_encoder(spec), tryout=TRYOUT)
    encoder, extractor, encoder_id = models.load_style_encoder(spec, args.device, args.dtype)
    enc = embeddings.StyleEncoder(encoder, extractor, encoder_id, embeddings.EmbeddingCache(embeddings.cache_dir()),
                                  styles_directory=directory)
    style = enc.encode(args.images, weights)
    embeddings.combine_styles(style.embeds, style.weights)  # validates the weights
    path = embeddings.save_style(style, args.name, directory, overwrite=args.overwrite)
    print(path)
    return 0


def cmd_serve(args) -> int:
    import os

    # 1. Check everything that needs no model: the extra is installed, the limits make sense.
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise InstantStyleError(f"the server needs the 'serve' extra ({exc.name} is missing): "
                                "pip install 'instantstyle[serve]'") from None
    from .server.service import GenerationService, Limits, check_controlnet_names

    limits = Limits(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                    max_prompt_length=args.max_prompt_length, max_style_images=args.max_style_images,
                    max_num_images=args.max_images, min_size=args.min_size, max_size=args.max_size,
                    max_steps=args.max_steps, max_cost=args.max_cost, job_timeout_s=args.job_timeout)
    if not args.drain_timeout >= 0:
        raise InstantStyleError(f"--drain-timeout is {args.drain_timeout}; it must be >= 0")
    if args.queue_size < 1:
        raise InstantStyleError(f"--queue-size is {args.queue_size}; it must be >= 1")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        raise InstantStyleError(f"--cpu-threads is {args.cpu_threads}; it must be >= 1")
    if not 0 < args.port < 65536:
        raise InstantStyleError(f"--port {args.port}: use 1-65535")
    controlnets = {}
    for entry in args.controlnet:
        name, sep, ref = entry.partition("=")
        if not (sep and name.strip() and ref.strip()):
            raise InstantStyleError(f"--controlnet {entry!r}: give NAME=REF, e.g. depth=diffusers/controlnet-depth-sdxl-1.0")
        controlnets[name.strip()] = ref.strip()
    check_controlnet_names(controlnets)
    from . import preflight

    _preflight(args, needs=preflight.needs_for_model(args.base, args.adapter, args.image_encoder,
                                                     content_text_encoder=args.content_text_encoder)
               + [preflight.Need("ControlNet", ref, "controlnet") for ref in controlnets.values()],
               tryout=TRYOUT.replace("the commands", "the server"))
    api_key = args.api_key or os.environ.get("INSTANTSTYLE_API_KEY") or None
    from .server.policy import Policy, default_allowed_hosts

    env_hosts = [h.strip() for h in os.environ.get("INSTANTSTYLE_ALLOWED_HOSTS", "").split(",") if h.strip()]
    allowed_hosts = default_allowed_hosts(args.host) + (args.allowed_host or env_hosts)
    Policy(allowed_hosts=allowed_hosts, allowed_origins=args.allowed_origin)  # checks the values now
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"instantstyle: warning: serving on {args.host} without an API key; anyone who can reach this "
              "port can generate (set --api-key or INSTANTSTYLE_API_KEY)", file=sys.stderr)

    # 2. Load the models once per device.
    from .pipeline import InstantStyle

    devices = [d.strip() for d in args.device.split(",")] if args.device else [None]
    models = []
    for device in devices:
        model = InstantStyle.from_pretrained(
            args.base, args.adapter, args.image_encoder, device=device, dtype=args.dtype, variant=args.variant,
            content_text_encoder=args.content_text_encoder, cache_dir=not args.no_cache, progress=False,
            memory=args.memory, **_speed_args(args), long_lived=True,
            vae=args.vae, base_config=args.base_config)
        model.styles.max_pixels = limits.max_pixels
        model.styles.styles_directory = args.styles_dir
        if not args.no_warmup and (model.speed.compile or model.speed.cuda_graphs):
            print(f"instantstyle: warming up {model.device} (compiling: about 1.5 min on an H200)...", file=sys.stderr)
            print(f"instantstyle: warm in {model.warmup():.0f} s", file=sys.stderr)
        models.append(model)

    # 3. Serve until interrupted.
    from .server.http_api import create_app

    service = GenerationService(models, queue_size=args.queue_size, limits=limits, cpu_threads=args.cpu_threads,
                                controlnets=controlnets, drain_timeout_s=args.drain_timeout)
    app = create_app(service, api_key=api_key, ui=not args.no_ui, allowed_hosts=allowed_hosts,
                     allowed_origins=args.allowed_origin, bind_host=args.host)
    where = f"http://{args.host}:{args.port}"
    print(f"instantstyle: serving {', '.join(str(m.device) for m in models)} at {where}"
          + ("" if args.no_ui else f" (UI {where}/ui/, API docs {where}/docs)"), file=sys.stderr)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: cancel the queued jobs and bound the running ones (--drain-timeout) at
        once, so open ?wait=true requests get their answers and the shutdown below never waits long."""

        def handle_exit(self, sig, frame):
            service.begin_shutdown(args.drain_timeout)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=max(1, int(args.drain_timeout) + 5))
    try:
        DrainingServer(config).run()
    finally:
        service.close(args.drain_timeout)
    return 0


def cmd_compare(args) -> int:
    from .compare import build_requests, compare, parse_methods, plan

    # 1. Validate methods, settings and every request before loading anything.
    settings = {k: getattr(args, k) for k in ("negative_prompt", "steps", "guidance", "seed", "width", "height",
                                              "scale", "content_prompt", "content_scale")
                if getattr(args, k) is not None}
    settings.update(_method_params(args))
    settings.setdefault("seed", str(secrets.randbelow(2**31)))
    methods = parse_methods(args.methods, bool(settings.get("lora")))
    from . import preflight
    from .images import load_image

    chosen = plan(methods, settings)
    requests = build_requests(chosen.methods, args.prompt, args.style, settings, chosen.overrides)
    _preflight(args, [lambda: load_image(args.style, what="style image")],
               preflight.needs_for_model(args.base, args.adapter, args.image_encoder,
                                         content_text_encoder=args.content_text_encoder), tryout=TRYOUT)
    for reqs in requests.values():
        _check_lora(args.base, reqs[0])
        settings.update({k: getattr(reqs[0], k) for k in settings if k in reqs[0].model_fields_set})  # typed
    scorer = None
    if args.metrics is not None:  # the metric models load (or fail, naming their fetch) before SDXL
        from .eval_cli import make_scorer

        scorer = make_scorer(args).load()
    # 2. Load models once, 3. run every method, 4. write grid, singles and reports.
    from .pipeline import InstantStyle

    model = InstantStyle.from_pretrained(
        args.base, args.adapter, args.image_encoder, device=args.device, dtype=args.dtype, variant=args.variant,
        content_text_encoder=args.content_text_encoder, cache_dir=True, progress=not args.quiet,
        memory=args.memory, **_speed_args(args),
        vae=args.vae, base_config=args.base_config,
    )
    result = compare(model, args.style, args.prompt, args.out, methods=methods, settings=settings,
                     overwrite=args.overwrite, log=lambda msg: print(msg, file=sys.stderr), scorer=scorer)
    print(result.grid)
    print(Path(args.out) / "report.md")
    return 0


def cmd_train_blora(args) -> int:
    from . import models, preflight
    from .images import load_image
    from .methods import b_lora

    # 1. Check the image, the base model and the output directory before loading the base model.
    base = args.base or models.DEFAULT_BASE
    _preflight(args, [lambda: load_image(args.image, what="B-LoRA image")], preflight.needs_for_base(base),
               tryout=TRYOUT)
    image = load_image(args.image, what="B-LoRA image")
    out = Path(args.out)
    if not args.resume and out.exists() and any(out.iterdir()):
        raise InstantStyleError(f"--out '{out}' is not empty; pass --resume to continue its training or choose a new directory")
    # 2. Load the base (no IP-Adapter needed), 3. train, 4. report.
    dev, dt = models.device_and_dtype(args.device, args.dtype)
    if base == models.TINY:
        from .testing.tiny import build_tiny

        pipe = build_tiny().pipe
    else:
        pipe = models.load_base_pipeline(base, dt, args.variant)
    pipe.to(dev)
    result = b_lora.train(pipe, image, out, steps=args.steps, rank=args.rank, lr=args.lr,
                          weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, resolution=args.resolution,
                          seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume,
                          base_id=models.canonical_id(base), progress=not args.quiet)
    print(f"eval loss {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f} "
          f"({result.steps} steps, {result.seconds:.1f} s)", file=sys.stderr)
    print(out)
    return 0


def cmd_make_tiny(args) -> int:
    from .testing.tiny import make_tiny

    paths = make_tiny(args.dir)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def cmd_train_adapter(args) -> int:
    from . import models, preflight
    from .training.adapter_trainer import train_adapter
    from .training.config import config_from_args

    config = config_from_args(args)
    encoder = config.image_encoder or (models.TINY if config.base == models.TINY else models.DEFAULT_IMAGE_ENCODER)
    from .training.data import open_source

    _preflight(args, [lambda: open_source(config.data)],  # the data first: an empty folder needs no models
               preflight.needs_for_base(config.base) + preflight.needs_for_encoder(encoder), tryout=TRYOUT)
    result = train_adapter(config, progress=not args.quiet)
    if result.adapter is not None:
        print(result.adapter)
    return 0


COMMANDS = {"generate": cmd_generate, "stylize": cmd_generate, "blocks": cmd_blocks, "style": cmd_style,
            "serve": cmd_serve, "compare": cmd_compare, "train-blora": cmd_train_blora, "make-tiny": cmd_make_tiny,
            "train-adapter": cmd_train_adapter, "download": lambda args: _download(args)}


def _download(args) -> int:
    from .cli_download import cmd_download

    return cmd_download(args)


# The library's errors name its parameters; on the command line the same advice names the flag.
_LIBRARY_TO_FLAGS = {r"\boverwrite=True\b": "--overwrite", r"\bresume='latest'": "--resume latest",
                     r"\bmax_steps\b": "--max-steps", r"\bout '": "--out '", r"\banother out\b": "another --out"}


def _flag_names(message: str) -> str:
    import re

    for library, flag in _LIBRARY_TO_FLAGS.items():
        message = re.sub(library, flag, message)
    return message


def _load_for_eval(args):
    """The generation model of eval / probe-blocks, from the same model flags as generate."""
    from .pipeline import InstantStyle

    return InstantStyle.from_pretrained(
        args.base, args.adapter, args.image_encoder, device=args.device, dtype=args.dtype, variant=args.variant,
        content_text_encoder=args.content_text_encoder, cache_dir=True, progress=not args.quiet,
        memory=args.memory, **_speed_args(args), vae=args.vae, base_config=args.base_config,
    )


def cmd_eval(args) -> int:
    from .eval_cli import cmd_eval as run

    return run(args, lambda: _load_for_eval(args))


def cmd_probe_blocks(args) -> int:
    from .eval_cli import cmd_probe_blocks as run

    return run(args, lambda: _load_for_eval(args))


COMMANDS.update({"eval": cmd_eval, "probe-blocks": cmd_probe_blocks})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_libraries()
    _one_line_warnings()
    if getattr(args, "quiet", False):
        _no_progress_bars()
    try:
        return COMMANDS[args.command](args)
    except InstantStyleError as exc:
        if args.debug:
            raise
        print(f"instantstyle: error: {_flag_names(str(exc))}", file=sys.stderr)
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
