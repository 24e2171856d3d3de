"""The web UI: Gradio Blocks mounted on the API's FastAPI app (same process, same job queue).

Drop one or several style images (with weights) or pick saved styles, type a prompt, choose a
mode preset or per-block scales, content subtraction, seed, steps, guidance and size, and
generate. A progress bar follows the job (queue position, then denoising steps); the gallery
keeps this session's results, shows each image's parameters and can re-use them.

The UI builds the same ``GenerateRequest`` and goes through the same checks
(``service.check``/``decode_upload``) as the HTTP API, so its limits are the server's limits.

No client names a server file here either: image inputs take uploads only, Gradio's file
checks are switched on for the mounted app (``gr.mount_gradio_app`` leaves the app in its
"not launched" state, in which Gradio copies any path a client names), each path is checked to
lie in Gradio's upload folder before it is read, and ``policy.RequestPolicy`` refuses hostile
file descriptors before Gradio sees them. Stop (or closing the page) cancels the job: a queued
one is dropped, a running one stops at its next step.
"""

import asyncio
import atexit
import hmac
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..config import MODES, SCHEDULERS, TASKS, GenerateRequest
from ..errors import InstantStyleError
from .service import (
    CANCELLED,
    FAILED,
    QUEUED,
    GenerationService,
    Uploads,
    decode_upload,
    fill_image_fields,
    parse_request,
)

MAX_HISTORY = 48
RESULT_TTL_S = 3600  # result PNGs the UI wrote are removed after an hour (and all of them at exit)


def _block_slider_values(model, mode: str) -> list[float]:
    """Per-module values that reproduce a mode preset (1 where the preset puts the style, else 0)."""
    from ..blocks import active_modules, preset_spec, resolve_branches

    cond = resolve_branches(model.modules, preset_spec(mode), 1.0)["cond"]  # sliders: the conditional branch
    active = set(active_modules(model.modules, cond))
    return [1.0 if m.name in active else 0.0 for m in model.modules]


def _blocks_spec(model, values) -> str:
    return ",".join(f"{m.name}={float(v):g}" for m, v in zip(model.modules, values, strict=True))


def _parse_weights(text: str | None) -> list[float] | None:
    if not text or not text.strip():
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise InstantStyleError(f"style weights {text!r}: give numbers separated by commas, e.g. 0.7, 0.3") from None


def _info(name: str) -> str:
    """A request field's help text, from the one schema."""
    return GenerateRequest.model_fields[name].description or ""


def _bounds(name: str) -> tuple[float | None, float | None]:
    """A request field's (lower, upper) bound, from the one schema's ``ge``/``gt``/``le``."""
    lo = hi = None
    for item in GenerateRequest.model_fields[name].metadata:
        lo = getattr(item, "ge", None) if getattr(item, "ge", None) is not None else \
            getattr(item, "gt", None) if getattr(item, "gt", None) is not None else lo
        hi = getattr(item, "le", None) if getattr(item, "le", None) is not None else hi
    return lo, hi


def _field_slider(gr, name: str, label: str, *, step: float, upper: float | None = None, **kw):
    lo, hi = _bounds(name)
    default = GenerateRequest.model_fields[name].default
    return gr.Slider(lo, upper if upper is not None else hi, value=default, step=step, label=label, info=_info(name),
                     **kw)


def _paths(value) -> list[str]:
    """Gradio file values (str, file objects, lists of them, None) -> paths."""
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [v if isinstance(v, str) else getattr(v, "name", v) for v in values if v]


def upload_dirs() -> list[str]:
    """Where Gradio keeps this server's uploads (and the copies of its results)."""
    from gradio.utils import get_upload_folder

    return [os.path.realpath(get_upload_folder())]


def _read(paths: list[str], limits, what: str, mask: bool = False) -> list:
    """Uploaded files -> decoded images; a path outside Gradio's upload folder is refused unread."""
    from .policy import inside

    allowed = upload_dirs()
    for p in paths:
        if not inside(p, allowed):
            raise InstantStyleError(f"a {what} is not an upload; upload the image file (a request never names a "
                                    "server file)")
    return [decode_upload(Path(p).read_bytes(), Path(p).name, limits, what=what, mask=mask) for p in paths]


def _prune(directory: Path, ttl_s: float = RESULT_TTL_S) -> None:
    cutoff = time.time() - ttl_s
    for f in directory.glob("*.png"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except OSError:
            pass


def _number_or_none(value) -> float | None:
    return None if value is None or value == "" else float(value)


def _enlarge(preview, target: int = 256):
    """A latent preview (uint8 [h, w, 3], 1/8 of the image size) blown up with visible pixels."""
    if preview is None:
        return None
    from PIL import Image

    image = Image.fromarray(preview)
    k = max(1, target // max(image.size))
    return image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def build_ui(service: GenerationService, *, output_dir: str | os.PathLike | None = None):
    """The Gradio Blocks for ``service`` (call ``mount_ui`` to serve it on the API's app)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ..embeddings import list_styles
    from ..methods import METHODS

    model, limits = service.model, service.limits
    methods = [m for m in METHODS if m != "b-lora"]  # b-lora reads a LoRA directory: CLI only
    styles_dir = model.styles.styles_directory
    if output_dir:
        out_dir = Path(output_dir)
    else:  # a private directory for result PNGs, removed at exit
        out_dir = Path(tempfile.mkdtemp(prefix="instantstyle-ui-"))
        atexit.register(shutil.rmtree, out_dir, True)
    out_dir.mkdir(parents=True, exist_ok=True)
    native = min(max(model.native_size, limits.min_size), limits.max_size)

    def saved_choices():
        return gr.update(choices=list_styles(styles_dir))

    # delete_cache: Gradio removes this app's uploads and result copies older than an hour, every
    # 10 minutes (and all of them when the server stops), so its cache stays bounded.
    with gr.Blocks(title="InstantStyle", analytics_enabled=False, delete_cache=(600, RESULT_TTL_S)) as demo:
        gr.Markdown("## InstantStyle\nStyle from reference images, content from your prompt. "
                    f"Models: `{model.ids.get('base')}` + `{model.ids.get('adapter')}`. "
                    "The same service is an HTTP API: see [/docs](/docs).")
        history = gr.State([])
        selected = gr.State(None)
        with gr.Row():
            with gr.Column(scale=5):
                files = gr.File(label="Style images (drop one or several)", file_count="multiple",
                                file_types=["image"], elem_id="style-files")
                weights = gr.Textbox(label="Style weights (optional)", elem_id="style-weights",
                                     placeholder="one per image, then one per saved style, e.g. 0.7, 0.3")
                with gr.Row():
                    saved = gr.Dropdown(choices=list_styles(styles_dir), multiselect=True, label="Saved styles",
                                        elem_id="saved-styles", scale=5)
                    refresh = gr.Button("Refresh", scale=1, size="sm")
                with gr.Accordion("Save the uploaded images as a style", open=False):
                    with gr.Row():
                        style_name = gr.Textbox(label="Style name", placeholder="watercolour", scale=4)
                        save_btn = gr.Button("Save style", scale=1)
                    save_status = gr.Markdown()
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    max_length=limits.max_prompt_length, placeholder="a cat, masterpiece")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt",
                                      max_length=limits.max_prompt_length)
                with gr.Row():
                    mode = gr.Radio(list(MODES), value="style", label="Mode (blocks that get the style)")
                    scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Style strength")
                with gr.Accordion("Per-block scales", open=False):
                    custom = gr.Checkbox(False, label="Use these per-block scales (replaces the mode)")
                    sliders = [gr.Slider(0.0, 2.0, value=v, step=0.05, label=f"{m.name} ({m.level}, /{m.downsample})")
                               for m, v in zip(model.modules, _block_slider_values(model, "style"), strict=True)]
                with gr.Accordion("Content subtraction", open=False):
                    content_prompt = gr.Textbox(label="Content of the reference to remove (e.g. 'a dog')",
                                                max_length=limits.max_prompt_length)
                    content_scale = gr.Slider(0.0, 2.0, value=0.5, step=0.05, label="Content scale")
                with gr.Accordion("Leakage controls (precise, composition image, negative image, step window)",
                                  open=False, elem_id="leakage-accordion"):
                    layout_boost = gr.Number(None, label="Layout boost (precise only; empty: 1)",
                                             info=_info("layout_boost"), minimum=0, maximum=10, elem_id="layout-boost")
                    with gr.Row():
                        composition = gr.Image(label="Composition image (its layout, into the layout block)",
                                               type="filepath", sources=["upload"], elem_id="composition-image",
                                               height=160)
                        negative_style = gr.Image(label="Negative style image (steer away from it)", type="filepath",
                                                  sources=["upload"], elem_id="negative-style-image", height=160)
                    with gr.Row():
                        composition_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Composition scale",
                                                      elem_id="composition-scale")
                        negative_style_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Negative image scale",
                                                         elem_id="negative-style-scale")
                    with gr.Row():
                        window_start = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Style from (fraction of steps)",
                                                 elem_id="window-start")
                        window_end = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Style until (fraction of steps)",
                                               elem_id="window-end")
                with gr.Accordion("Content image (ControlNet, img2img, inpainting, InstantStyle-Plus)",
                                  open=False, elem_id="content-accordion"):
                    with gr.Row():
                        content = gr.Image(label="Content image (used by every task but txt2img)", type="filepath",
                                           sources=["upload"], elem_id="content-image", height=180)
                        mask = gr.Image(label="Inpainting mask (white = repaint)", type="filepath", image_mode="L",
                                        sources=["upload"], elem_id="mask-image", height=180)
                    task = gr.Radio(list(TASKS), value="txt2img", label="Task", info=_info("task"), elem_id="task")
                    control = gr.CheckboxGroup(service.control_choices(), value=[], label="ControlNets",
                                               info=_info("control"), elem_id="control")
                    control_files = gr.File(label="Control images (one per ControlNet; none: canny/tile derive "
                                                  "theirs from the content image)", file_count="multiple",
                                            file_types=["image"], elem_id="control-files")
                    with gr.Row():
                        control_scale = gr.Number(None, label="Control scale (empty: default)",
                                                  info=_info("control_scale"), minimum=0, maximum=2)
                        strength = gr.Number(None, label="Strength (empty: default)", info=_info("strength"),
                                             minimum=0, maximum=1, elem_id="strength")
                    with gr.Row():
                        canny_low = _field_slider(gr, "canny_low", "Canny low", step=1, upper=255)
                        canny_high = _field_slider(gr, "canny_high", "Canny high", step=1, upper=255)
                with gr.Accordion("Regional styles", open=False):
                    style_mask_files = gr.File(label="Style masks: one per style image, same order (white = "
                                                     "that style's region)", file_count="multiple",
                                               file_types=["image"], elem_id="style-mask-files")
                with gr.Accordion("Method", open=False):
                    method = gr.Dropdown(methods, value="instantstyle", label="Method", elem_id="method",
                                         info="; ".join(f"{m}: {METHODS[m].summary}" for m in methods))
                    reference_prompt = gr.Textbox(label="Reference prompt", info=_info("reference_prompt"),
                                                  max_length=limits.max_prompt_length, elem_id="reference-prompt")
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="seed")
                        steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1,
                                          label="Steps", elem_id="steps")
                        guidance = gr.Slider(0.0, 20.0, value=5.0, step=0.5, label="Guidance")
                    with gr.Row():
                        width = gr.Slider(limits.min_size, limits.max_size, value=native, step=8, label="Width",
                                          elem_id="width")
                        height = gr.Slider(limits.min_size, limits.max_size, value=native, step=8, label="Height",
                                           elem_id="height")
                        num_images = gr.Slider(1, limits.max_num_images, value=1, step=1, label="Images")
                        scheduler = gr.Dropdown(list(SCHEDULERS), value="euler", label="Sampler")
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate", scale=4)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            with gr.Column(scale=5):
                preview = gr.Image(label="Step preview (latents, rough colours)", elem_id="preview",
                                   interactive=False, height=160, visible=True, show_label=True)
                gallery = gr.Gallery(label="Results (click one for its parameters)", elem_id="gallery", columns=2,
                                     height=480, interactive=False)
                params_view = gr.JSON(label="Parameters of the selected image", elem_id="params")
                reuse_btn = gr.Button("Re-use these parameters", elem_id="reuse")

        form = [files, weights, saved, prompt, negative, mode, scale, custom, content_prompt, content_scale,
                seed, steps, guidance, width, height, num_images, scheduler, content, mask, task, control,
                control_files, control_scale, strength, canny_low, canny_high, style_mask_files, method,
                reference_prompt, layout_boost, composition, composition_scale, negative_style,
                negative_style_scale, window_start, window_end, *sliders]
        names = ["files", "weights", "saved", "prompt", "negative", "mode", "scale", "custom", "content_prompt",
                 "content_scale", "seed", "steps", "guidance", "width", "height", "num_images", "scheduler",
                 "content", "mask", "task", "control", "control_files", "control_scale", "strength", "canny_low",
                 "canny_high", "style_mask_files", "method", "reference_prompt", "layout_boost", "composition",
                 "composition_scale", "negative_style", "negative_style_scale", "window_start", "window_end"]

        def build(values: list):
            v = dict(zip(names, values[: len(names)], strict=True))
            block_values = values[len(names):]
            paths = _paths(v["files"])
            task_ = v["task"] or "txt2img"
            stylize = task_ != "txt2img"
            inputs = {  # upload paths, per kind (what the task uses)
                "content": _paths(v["content"]) if stylize else [],
                "mask": _paths(v["mask"]) if task_ == "inpaint" else [],
                "style_masks": _paths(v["style_mask_files"]),
                "control": _paths(v["control_files"]) if stylize else [],
                "composition": _paths(v["composition"]),
                "negative_style": _paths(v["negative_style"]),
            }
            scale_ = _number_or_none(v["control_scale"])
            params = {
                "prompt": v["prompt"] or "",
                "negative_prompt": v["negative"] or None,
                "style": [f"@{n}" for n in (v["saved"] or [])],
                "style_weights": _parse_weights(v["weights"]),
                "mode": v["mode"],
                "scale": v["scale"],
                "blocks": _blocks_spec(model, block_values) if v["custom"] else None,
                "content_prompt": v["content_prompt"] or None,
                "content_scale": v["content_scale"] if v["content_prompt"] else None,
                "seed": None if v["seed"] is None or int(v["seed"]) < 0 else int(v["seed"]),
                "steps": int(v["steps"]),
                "guidance": v["guidance"],
                "width": int(v["width"]),
                "height": int(v["height"]),
                "num_images": int(v["num_images"]),
                "scheduler": v["scheduler"],
                "method": v["method"] or "instantstyle",
                "reference_prompt": v["reference_prompt"] or None,
                "layout_boost": _number_or_none(v["layout_boost"]),
                "composition_scale": v["composition_scale"] if inputs["composition"] else None,
                "negative_style_scale": v["negative_style_scale"] if inputs["negative_style"] else None,
                "style_window": (v["window_start"], v["window_end"]),
            }
            if stylize:
                params.update(task=task_, control=list(v["control"] or []),
                              control_scale=[] if scale_ is None else [scale_],
                              canny_low=int(v["canny_low"]), canny_high=int(v["canny_high"]))
                if task_ in ("img2img", "inpaint"):
                    params["strength"] = _number_or_none(v["strength"])
            params = fill_image_fields(params, content=bool(inputs["content"]), mask=bool(inputs["mask"]),
                                       style_masks=len(inputs["style_masks"]), control_images=len(inputs["control"]),
                                       composition=bool(inputs["composition"]),
                                       negative_style=bool(inputs["negative_style"]))
            req = parse_request(params, style_images=len(paths))
            service.check(req, style_images=len(paths))
            images = _read(paths, limits, "style image")
            uploads = Uploads(
                content=next(iter(_read(inputs["content"], limits, "content image")), None),
                mask=next(iter(_read(inputs["mask"], limits, "mask", mask=True)), None),
                style_masks=_read(inputs["style_masks"], limits, "style mask", mask=True),
                control_images=_read(inputs["control"], limits, "control image"),
                composition=next(iter(_read(inputs["composition"], limits, "composition image")), None),
                negative_style=next(iter(_read(inputs["negative_style"], limits, "negative style image")), None),
            )
            service.check_inputs(req, uploads)
            return req, images, paths, uploads, inputs

        async def generate(*values, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
            # async: Gradio's cancel (Stop, a closed page) lands here as CancelledError at an await,
            # and the finally below cancels the job, so the worker is freed for the next one.
            hist = values[-1]
            try:
                req, images, paths, uploads, inputs = await asyncio.to_thread(build, list(values[:-1]))
                job = service.submit_generate(req, images, uploads=uploads)
            except InstantStyleError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            try:
                progress(0.0, desc="queued")
                shown = None
                while not job.done:
                    await asyncio.sleep(0.1)
                    if job.status == QUEUED:
                        ahead = service.position(job)
                        progress(0.0, desc=f"queued ({ahead} ahead)" if ahead else "queued")
                    else:
                        progress((job.step, job.total), desc="generating", unit="steps")
                    if job.preview is not None and job.preview is not shown:
                        shown = job.preview
                        yield _enlarge(shown), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            finally:
                if not job.done:
                    service.cancel(job, "cancelled in the web UI")
            if job.status in (FAILED, CANCELLED):
                raise gr.Error(job.error or "generation failed", print_exception=False)
            _prune(out_dir)
            new = []
            for r in job.results:
                path = out_dir / f"{job.id}-{r.index}.png"
                path.write_bytes(r.png)
                new.append({"path": str(path), "params": r.params, "style_files": paths, "inputs": inputs})
            hist = (new + list(hist))[:MAX_HISTORY]
            yield _enlarge(job.preview), _gallery(hist), hist, new[0]["params"], new[0]

        def _gallery(hist):
            return [(h["path"], f"seed {h['params'].get('seed')} · {h['params'].get('prompt', '')[:40]}")
                    for h in hist]

        def on_select(hist, evt: gr.SelectData):
            item = hist[evt.index] if evt.index is not None and evt.index < len(hist) else None
            return (item["params"] if item else None), item

        def reuse(item):
            if not item:
                raise gr.Error("select an image in the gallery first", print_exception=False)
            p = item["params"]
            block_values = _block_slider_values(model, p.get("mode") or "style")
            is_custom = bool(p.get("blocks"))
            if is_custom:
                from ..blocks import parse_spec

                given = dict(parse_spec(p["blocks"]))
                block_values = [given.get(m.name, 0.0) for m in model.modules]
            saved_names = [s[1:] for s in p.get("style", []) if s.startswith("@")]
            inputs = item.get("inputs") or {}
            scales = p.get("control_scale") or []
            return [
                item.get("style_files") or None, "" if p.get("style_weights") is None else
                ", ".join(f"{w:g}" for w in p["style_weights"]), saved_names, p.get("prompt", ""),
                p.get("negative_prompt") or "", p.get("mode") or "style", p.get("scale", 1.0), is_custom,
                p.get("content_prompt") or "", p.get("content_scale") or 0.5, p.get("seed", -1),
                p.get("steps", 30), p.get("guidance", 5.0), p.get("width", native), p.get("height", native),
                p.get("num_images", 1), p.get("scheduler", "euler"),
                next(iter(inputs.get("content") or []), None), next(iter(inputs.get("mask") or []), None),
                p.get("task") or "txt2img", p.get("control") or [], inputs.get("control") or None,
                scales[0] if scales else None, p.get("strength"), p.get("canny_low", 50), p.get("canny_high", 200),
                inputs.get("style_masks") or None, p.get("method", "instantstyle"), p.get("reference_prompt") or "",
                p.get("layout_boost"), next(iter(inputs.get("composition") or []), None),
                p.get("composition_scale") or 1.0, next(iter(inputs.get("negative_style") or []), None),
                p.get("negative_style_scale") or 1.0, *(p.get("style_window") or (0.0, 1.0)),
                *block_values,
            ]

        def save_style(files_value, name, weights_text):
            from ..embeddings import save_style as save
            from ..embeddings import style_path

            try:
                paths = _paths(files_value)
                if not paths:
                    raise InstantStyleError("upload one or more style images first")
                style_path(name or "", styles_dir)  # validates the name
                w = _parse_weights(weights_text)
                images = _read(paths, limits, "style image")
                style = service.call(lambda m: m.encode_style(images, w), kind="style")
                save(style, name, styles_dir, overwrite=False)
            except InstantStyleError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            return f"saved **@{name}** ({len(paths)} images)", gr.update(choices=list_styles(styles_dir))

        run_event = run_btn.click(generate, inputs=[*form, history],
                                  outputs=[preview, gallery, history, params_view, selected],
                                  concurrency_limit=service.queue_size + len(service.models))
        stop_btn.click(None, cancels=[run_event])
        gallery.select(on_select, inputs=[history], outputs=[params_view, selected])
        reuse_btn.click(reuse, inputs=[selected], outputs=form)
        mode.change(lambda m: _block_slider_values(model, m), inputs=[mode], outputs=sliders)
        # Plus undoes a DDIM inversion: it samples with DDIM (the request refuses another sampler)
        task.change(lambda t: "ddim" if t == "plus" else gr.skip(), inputs=[task], outputs=[scheduler])
        refresh.click(saved_choices, outputs=[saved])
        save_btn.click(save_style, inputs=[files, style_name, weights], outputs=[save_status, saved])
        demo.load(saved_choices, outputs=[saved])
    return demo


def _blocked_paths(service: GenerationService, keep: list[str]) -> list[str]:
    """Directories Gradio must never serve or copy from: saved styles, the working directory, the
    home directory and the model folders (each unless it holds Gradio's upload folder)."""
    from ..embeddings import styles_dir

    model = service.model
    candidates = [model.styles.styles_directory or styles_dir(), os.getcwd(), Path.home()]
    candidates += [v for v in getattr(model, "ids", {}).values() if isinstance(v, str) and os.path.isdir(v)]
    out = []
    for c in candidates:
        real = os.path.realpath(c)
        if not any(os.path.commonpath([real, os.path.realpath(k)]) == real for k in keep):
            out.append(real)
    return sorted(set(out))


def mount_ui(app, service: GenerationService, *, path: str = "/ui", api_key: str | None = None,
             output_dir: str | os.PathLike | None = None, policy=None):
    """Mount the UI on ``app`` at ``path``; with an API key, the UI asks for it (any user name).

    ``policy`` (the app's ``policy.Policy``) learns the UI's upload folder and login cookies.
    """
    import gradio as gr
    from starlette.routing import Mount

    demo = build_ui(service, output_dir=output_dir)
    auth = None
    if api_key:
        def auth(_user: str, password: str) -> bool:
            return hmac.compare_digest(password.encode(), api_key.encode())

    uploads = upload_dirs()
    gr.mount_gradio_app(app, demo, path=path, auth=auth, max_file_size=service.limits.max_upload_bytes,
                        auth_message="Enter the server's API key as the password (any user name)."
                        if api_key else None, footer_links=["api"], allowed_paths=[],
                        blocked_paths=_blocked_paths(service, uploads))
    # Gradio checks the files a client names only once an app has "launched" (Blocks.launch sets
    # this; mount_gradio_app does not, as of gradio 6.31): without it, a descriptor naming any server
    # file is copied into the cache and served. is_running also stops it marking client SVG paths static.
    demo.has_launched = True
    demo.is_running = True
    if policy is not None:
        gradio_app = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == path.rstrip("/"))
        policy.upload_dirs = uploads
        policy.ui_cookie_names = (f"access-token-{gradio_app.cookie_id}",
                                  f"access-token-unsecure-{gradio_app.cookie_id}")
        policy.ui_tokens = gradio_app.tokens
    return app
