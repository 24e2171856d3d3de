"""``instantstyle serve``: the web UI and the HTTP API from one process (models loaded once)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InstantStyleError
from . import common, options

EPILOG = (
    "examples:\n  instantstyle serve --base tiny          # try it without weights (images are noise)\n"
    '  instantstyle serve --api-key "$(openssl rand -hex 16)" --host 0.0.0.0\n'
    '  instantstyle serve --lora-dir loras/      # requests may use loras: ["NAME:0.7"] for loras/NAME.safetensors\n'
    '  curl -F images=@ref.png -F \'params={"prompt": "a cat", "seed": 1}\' \\\n'
    "       'http://127.0.0.1:7860/v1/generate?wait=true'"
)


def register(sub) -> None:
    sv = common.add_command(
        sub,
        "serve",
        run,
        help="web UI + HTTP API: models loaded once, a bounded job queue",
        description="Serve the web UI (at /ui) and the HTTP API (at /v1, documented at /docs) from one process. "
        "Models load once; one worker per device runs the jobs from a bounded queue (a full queue "
        "answers 429 with Retry-After). Needs the 'serve' extra: pip install 'instantstyle[serve]'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_network_args(sv)
    _add_limit_args(sv)
    options.add_model_args(sv)
    sv._option_string_actions[
        "--device"
    ].help = "one worker per device, comma-separated: cuda:0,cuda:1 loads the models on each (default: cuda if available)"


def _add_network_args(sv) -> None:
    n = sv.add_argument_group("network")
    n.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes it: set an API key)",
    )
    n.add_argument("--port", type=int, default=7860, help="default: %(default)s")
    n.add_argument(
        "--api-key",
        default=None,
        help="require this key on every API call ('Authorization: Bearer KEY' or 'X-API-Key: KEY') and "
        "as the UI password (default: $INSTANTSTYLE_API_KEY, else none)",
    )
    n.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers to, besides localhost and the --host address (behind a "
        "reverse proxy: its public name); repeatable; '*' answers to any (default: "
        "$INSTANTSTYLE_ALLOWED_HOSTS, comma-separated)",
    )
    n.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example.com) allowed to call the API from its pages (CORS); "
        "repeatable; default none: cross-origin requests that change state are refused",
    )
    n.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    n.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the start-up warm-up generation (with a compiling --speed, such as the default max "
        "on CUDA, the warm-up compiles and captures before the first request instead of during it)",
    )


def _add_limit_args(sv) -> None:
    from ..server.limits import Limits

    lim = Limits()
    q = sv.add_argument_group("queue and limits (per request)")
    q.add_argument(
        "--queue-size", type=int, default=8, help="jobs waiting at most; more get 429 (default: %(default)s)"
    )
    q.add_argument(
        "--max-upload-bytes",
        type=int,
        default=lim.max_upload_bytes,
        help="bytes per uploaded image (default: %(default)s)",
    )
    q.add_argument(
        "--max-pixels",
        type=int,
        default=lim.max_pixels,
        help="pixels per uploaded image (default: %(default)s)",
    )
    q.add_argument(
        "--max-prompt-length",
        type=int,
        default=lim.max_prompt_length,
        help="characters per prompt (default: %(default)s)",
    )
    q.add_argument(
        "--max-style-images",
        type=int,
        default=lim.max_style_images,
        help="uploaded images + saved styles per request (default: %(default)s)",
    )
    q.add_argument(
        "--max-images",
        type=int,
        default=lim.max_num_images,
        help="generated images per request (default: %(default)s)",
    )
    q.add_argument(
        "--min-size", type=int, default=lim.min_size, help="smallest width/height (default: %(default)s)"
    )
    q.add_argument(
        "--max-size", type=int, default=lim.max_size, help="largest width/height (default: %(default)s)"
    )
    q.add_argument(
        "--max-steps", type=int, default=lim.max_steps, help="most denoising steps (default: %(default)s)"
    )
    q.add_argument(
        "--max-cost",
        type=float,
        default=lim.max_cost,
        help="most steps x width x height x images per request, counted in steps of a 1024x1024 image "
        "(default: %(default)s = 4 images of 1024x1024 at 50 steps)",
    )
    q.add_argument(
        "--job-timeout",
        type=float,
        default=lim.job_timeout_s,
        metavar="S",
        help="a running job past S seconds stops at its next step and fails (default: %(default)s)",
    )
    q.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM/Ctrl-C, queued jobs are answered as cancelled and running ones get S seconds "
        "before they stop (default: %(default)s)",
    )
    q.add_argument(
        "--styles-dir",
        default=None,
        help="saved styles (default: $INSTANTSTYLE_STYLES or ~/.local/share/instantstyle/styles)",
    )
    q.add_argument("--no-cache", action="store_true", help="do not cache image embeddings on disk")
    q.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch threads per worker (default: torch's; 1 is often fastest for small CPU models)",
    )
    q.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="NAME=REF",
        help="allow requests to use the ControlNet REF (local diffusers dir or Hub id, loaded at start) "
        "as control NAME (fed an uploaded control image) or canny=NAME / tile=NAME; repeatable. "
        "canny and tile (default ControlNets) are always allowed; a request never names a path",
    )
    q.add_argument(
        "--lora-dir",
        default=None,
        metavar="DIR",
        help="offer the user LoRAs in DIR by name: each DIR/NAME.safetensors is LoRA NAME, which "
        'requests use as loras: ["NAME"] or ["NAME:0.7"] (and the UI lists); checked against the base '
        "at start. Without it (or --lora), requests with loras are refused",
    )
    q.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="offer one LoRA file (local path or Hub 'owner/repo/file.safetensors') as NAME; repeatable",
    )


def _limits(args):
    """``Limits`` from the flags, with the server's own numbers checked."""
    from ..server.limits import Limits

    limits = Limits(
        max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels,
        max_prompt_length=args.max_prompt_length,
        max_style_images=args.max_style_images,
        max_num_images=args.max_images,
        min_size=args.min_size,
        max_size=args.max_size,
        max_steps=args.max_steps,
        max_cost=args.max_cost,
        job_timeout_s=args.job_timeout,
    )
    if not args.drain_timeout >= 0:
        raise InstantStyleError(f"--drain-timeout is {args.drain_timeout}; it must be >= 0")
    if args.queue_size < 1:
        raise InstantStyleError(f"--queue-size is {args.queue_size}; it must be >= 1")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        raise InstantStyleError(f"--cpu-threads is {args.cpu_threads}; it must be >= 1")
    if not 0 < args.port < 65536:
        raise InstantStyleError(f"--port {args.port}: use 1-65535")
    return limits


def _controlnets(args) -> dict[str, str]:
    from ..server.checks import check_controlnet_names

    controlnets = {}
    for entry in args.controlnet:
        name, sep, ref = entry.partition("=")
        if not (sep and name.strip() and ref.strip()):
            raise InstantStyleError(
                f"--controlnet {entry!r}: give NAME=REF, e.g. depth=diffusers/controlnet-depth-sdxl-1.0"
            )
        controlnets[name.strip()] = ref.strip()
    check_controlnet_names(controlnets)
    return controlnets


def _loras(args) -> dict[str, str]:
    """The LoRAs requests may name: ``--lora-dir``'s files by their stem, then each ``--lora NAME=PATH``."""
    from pathlib import Path

    from ..embeddings import STYLE_NAME

    offered: dict[str, str] = {}
    if args.lora_dir:
        folder = Path(args.lora_dir).expanduser()
        if not folder.is_dir():
            raise InstantStyleError(
                f"--lora-dir '{args.lora_dir}' is not a folder; give the folder of your LoRAs"
            )
        offered = {f.stem: str(f) for f in sorted(folder.glob("*.safetensors"))}
        if not offered:
            raise InstantStyleError(f"--lora-dir '{args.lora_dir}' holds no .safetensors files")
    for entry in args.lora:
        name, sep, ref = entry.partition("=")
        if not (sep and name.strip() and ref.strip()):
            raise InstantStyleError(f"--lora {entry!r}: give NAME=PATH, e.g. detail=loras/detail.safetensors")
        offered[name.strip()] = ref.strip()
    bad = next((n for n in offered if not STYLE_NAME.fullmatch(n)), None)
    if bad is not None:
        raise InstantStyleError(
            f"LoRA name {bad!r}: names are 1-64 letters, digits, '_', '-', '.' (rename the file or use --lora NAME=PATH)"
        )
    return offered


def _access(args) -> tuple[str | None, list[str]]:
    """The API key and the Host names to answer to (checked now), with a warning for an open bind."""
    import os

    from ..server.policy import Policy, default_allowed_hosts

    api_key = args.api_key or os.environ.get("INSTANTSTYLE_API_KEY") or None
    env_hosts = [h.strip() for h in os.environ.get("INSTANTSTYLE_ALLOWED_HOSTS", "").split(",") if h.strip()]
    allowed_hosts = default_allowed_hosts(args.host) + (args.allowed_host or env_hosts)
    Policy(allowed_hosts=allowed_hosts, allowed_origins=args.allowed_origin)  # checks the values now
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"instantstyle: warning: serving on {args.host} without an API key; anyone who can reach this "
            "port can generate (set --api-key or INSTANTSTYLE_API_KEY)",
            file=sys.stderr,
        )
    return api_key, allowed_hosts


def _load_models(args, limits) -> list:
    """The models once per ``--device``, warmed up when the speed compiles or captures graphs."""
    devices = [d.strip() for d in args.device.split(",")] if args.device else [None]
    models = []
    for device in devices:
        model = options.load_model(
            args, device=device, cache_dir=not args.no_cache, progress=False, long_lived=True
        )
        model.styles.max_pixels = limits.max_pixels
        model.styles.styles_directory = args.styles_dir
        if not args.no_warmup and (model.speed.compile or model.speed.cuda_graphs):
            print(
                f"instantstyle: warming up {model.device} (compiling: about 1.5 min on an H200)...",
                file=sys.stderr,
            )
            print(f"instantstyle: warm in {model.warmup():.0f} s", file=sys.stderr)
        models.append(model)
    return models


def run(args) -> int:
    # 1. Check everything that needs no model: the extra is installed, the limits make sense.
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise InstantStyleError(
            f"the server needs the 'serve' extra ({exc.name} is missing): pip install 'instantstyle[serve]'"
        ) from None
    from .. import preflight

    limits = _limits(args)
    controlnets = _controlnets(args)
    loras = _loras(args)
    common.preflight(
        args,
        needs=preflight.needs_for_model(
            args.base, args.adapter, args.image_encoder, content_text_encoder=args.content_text_encoder
        )
        + [preflight.Need("ControlNet", ref, "controlnet") for ref in controlnets.values()],
        tryout=common.TRYOUT.replace("the commands", "the server"),
    )
    api_key, allowed_hosts = _access(args)

    # 2. Load the models once per device.
    models = _load_models(args, limits)

    # 3. Serve until interrupted.
    from ..server.app import create_app
    from ..server.service import GenerationService

    service = GenerationService(
        models,
        queue_size=args.queue_size,
        limits=limits,
        cpu_threads=args.cpu_threads,
        controlnets=controlnets,
        loras=loras,
        drain_timeout_s=args.drain_timeout,
    )
    app = create_app(
        service,
        api_key=api_key,
        ui=not args.no_ui,
        allowed_hosts=allowed_hosts,
        allowed_origins=args.allowed_origin,
        bind_host=args.host,
    )
    where = f"http://{args.host}:{args.port}"
    print(
        f"instantstyle: serving {', '.join(str(m.device) for m in models)} at {where}"
        + ("" if args.no_ui else f" (UI {where}/ui/, API docs {where}/docs)"),
        file=sys.stderr,
    )
    _serve(uvicorn, app, service, args)
    return 0


def _serve(uvicorn, app, service, args) -> None:
    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: cancel the queued jobs and bound the running ones (--drain-timeout) at
        once, so open ?wait=true requests get their answers and the shutdown below never waits long."""

        def handle_exit(self, sig, frame):
            service.begin_shutdown(args.drain_timeout)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(args.drain_timeout) + 5),
    )
    try:
        DrainingServer(config).run()
    finally:
        service.close(args.drain_timeout)
