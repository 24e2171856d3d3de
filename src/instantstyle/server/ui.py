"""The web UI: Gradio Blocks mounted on the API's FastAPI app (same process, same job queue).

Drop one or several style images (with weights) or pick saved styles, type a prompt, choose a
mode preset or per-block scales, content subtraction, seed, steps, guidance and size, and
generate. A progress bar follows the job (queue position, then denoising steps); the gallery
keeps this session's results, shows each image's parameters and can re-use them.

The form is made from the request schema (``ui_form``: one widget per field, the schema's ranges,
defaults and choices). The UI builds the same ``GenerateRequest`` and goes through the same checks
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

from ..errors import InstantStyleError
from .checks import parse_request
from .jobs import CANCELLED, FAILED, QUEUED
from .service import GenerationService
from .ui_form import (
    IMAGE_FIELDS,
    PRESET_FIELDS,
    TASK_FIELDS,
    Form,
    block_slider_values,
    field_widgets,
    form_values,
    preset_changed,
    request_params,
    task_changed,
)
from .uploads import Uploads, decode_upload, fill_image_fields

MAX_HISTORY = 48
RESULT_TTL_S = 3600  # result PNGs the UI wrote are removed after an hour (and all of them at exit)


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
            raise InstantStyleError(
                f"a {what} is not an upload; upload the image file (a request never names a server file)"
            )
    return [decode_upload(Path(p).read_bytes(), Path(p).name, limits, what=what, mask=mask) for p in paths]


def _prune(directory: Path, ttl_s: float = RESULT_TTL_S) -> None:
    cutoff = time.time() - ttl_s
    for f in directory.glob("*.png"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except OSError:
            pass


def _enlarge(preview, target: int = 256):
    """A latent preview (uint8 [h, w, 3], 1/8 of the image size) blown up with visible pixels."""
    if preview is None:
        return None
    from PIL import Image

    image = Image.fromarray(preview)
    k = max(1, target // max(image.size))
    return image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def _build_request(service, form: Form, values: list):
    """Form values -> (request, style images, style paths, uploads, upload paths), all checked."""
    limits = service.limits
    files, saved, v, block_values = form.split(values)
    paths = _paths(files)
    inputs = {name: _paths(v[name]) for name in IMAGE_FIELDS}
    params = request_params(service.model, saved, v, block_values)
    params = fill_image_fields(
        params,
        content=bool(inputs["content"]),
        mask=bool(inputs["mask"]),
        style_masks=len(inputs["style_masks"]),
        control_images=len(inputs["control_image"]),
        composition=bool(inputs["composition"]),
        negative_style=bool(inputs["negative_style"]),
    )
    req = parse_request(params, style_images=len(paths))
    service.check(req, style_images=len(paths))
    images = _read(paths, limits, "style image")
    read = {
        name: _read(inputs[name], limits, what, mask=name in ("mask", "style_masks"))
        for name, what in IMAGE_FIELDS.items()
    }
    uploads = Uploads(
        content=next(iter(read["content"]), None),
        mask=next(iter(read["mask"]), None),
        style_masks=read["style_masks"],
        control_images=read["control_image"],
        composition=next(iter(read["composition"]), None),
        negative_style=next(iter(read["negative_style"]), None),
    )
    service.check_inputs(req, uploads)
    return req, images, paths, uploads, inputs


# ---------------------------------------------------------------------- the page


def _gallery(hist):
    return [
        (h["path"], f"seed {h['params'].get('seed')} · {h['params'].get('prompt', '')[:40]}") for h in hist
    ]


def _generate_handler(gr, service: GenerationService, form: Form, out_dir: Path):
    async def generate(*values, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        # async: Gradio's cancel (Stop, a closed page) lands here as CancelledError at an await,
        # and the finally below cancels the job, so the worker is freed for the next one.
        hist = values[-1]
        try:
            req, images, paths, uploads, inputs = await asyncio.to_thread(
                _build_request, service, form, list(values[:-1])
            )
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

    return generate


def _save_style_handler(gr, service: GenerationService, styles_dir):
    from ..embeddings import list_styles, style_path
    from ..embeddings import save_style as save
    from ..schema_flags import parse_numbers

    def save_style(files_value, name, weights_text):
        try:
            paths = _paths(files_value)
            if not paths:
                raise InstantStyleError("upload one or more style images first")
            style_path(name or "", styles_dir)  # validates the name
            w = parse_numbers(weights_text, "style weights")
            images = _read(paths, service.limits, "style image")
            style = service.call(lambda m: m.encode_style(images, w), kind="style")
            save(style, name, styles_dir, overwrite=False)
        except InstantStyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"saved **@{name}** ({len(paths)} images)", gr.update(choices=list_styles(styles_dir))

    return save_style


def _results_column(gr) -> dict:
    preview = gr.Image(
        label="Step preview (latents, rough colours)",
        elem_id="preview",
        interactive=False,
        height=160,
        visible=True,
        show_label=True,
    )
    gallery = gr.Gallery(
        label="Results (click one for its parameters)",
        elem_id="gallery",
        columns=2,
        height=480,
        interactive=False,
    )
    params_view = gr.JSON(label="Parameters of the selected image", elem_id="params")
    reuse_btn = gr.Button("Re-use these parameters", elem_id="reuse")
    return {"preview": preview, "gallery": gallery, "params": params_view, "reuse": reuse_btn}


def _output_dir(output_dir) -> Path:
    if output_dir:
        out_dir = Path(output_dir)
    else:  # a private directory for result PNGs, removed at exit
        out_dir = Path(tempfile.mkdtemp(prefix="instantstyle-ui-"))
        atexit.register(shutil.rmtree, out_dir, True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def build_ui(service: GenerationService, *, output_dir: str | os.PathLike | None = None):
    """The Gradio Blocks for ``service`` (call ``mount_ui`` to serve it on the API's app)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ..embeddings import list_styles
    from ..methods import METHODS

    model, limits = service.model, service.limits
    methods = [m for m in METHODS if m != "b-lora"]  # b-lora reads a LoRA directory: CLI only
    styles_dir = model.styles.styles_directory
    out_dir = _output_dir(output_dir)
    native = min(max(model.native_size, limits.min_size), limits.max_size)
    specs = field_widgets(
        limits,
        control_choices=service.control_choices(),
        methods=methods,
        native=native,
        lora_names=service.lora_names(),
    )

    # delete_cache: Gradio removes this app's uploads and result copies older than an hour, every
    # 10 minutes (and all of them when the server stops), so its cache stays bounded.
    with gr.Blocks(title="InstantStyle", analytics_enabled=False, delete_cache=(600, RESULT_TTL_S)) as demo:
        gr.Markdown(
            "## InstantStyle\nStyle from reference images, content from your prompt. "
            f"Models: `{model.ids.get('base')}` + `{model.ids.get('adapter')}`. "
            "The same service is an HTTP API: see [/docs](/docs)."
        )
        history = gr.State([])
        selected = gr.State(None)
        with gr.Row():
            with gr.Column(scale=5):
                form = Form(gr, model, specs, styles_dir)
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate", scale=4)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            with gr.Column(scale=5):
                res = _results_column(gr)

        def on_select(hist, evt: gr.SelectData):
            item = hist[evt.index] if evt.index is not None and evt.index < len(hist) else None
            return (item["params"] if item else None), item

        def reuse(item):
            if not item:
                raise gr.Error("select an image in the gallery first", print_exception=False)
            return form_values(model, item)

        run_event = run_btn.click(
            _generate_handler(gr, service, form, out_dir),
            inputs=[*form.inputs, history],
            outputs=[res["preview"], res["gallery"], history, res["params"], selected],
            concurrency_limit=service.queue_size + len(service.models),
        )
        stop_btn.click(None, cancels=[run_event])
        res["gallery"].select(on_select, inputs=[history], outputs=[res["params"], selected])
        res["reuse"].click(reuse, inputs=[selected], outputs=form.inputs)
        mode = form.fields["mode"]
        mode.change(lambda m: block_slider_values(model, m or "style"), inputs=[mode], outputs=form.sliders)
        task_fields = [form.fields[n] for n in TASK_FIELDS]
        form.fields["task"].change(
            task_changed, inputs=[form.fields["task"], *task_fields], outputs=task_fields
        )
        preset_fields = [form.fields[n] for n in PRESET_FIELDS]
        form.fields["sampling"].change(
            preset_changed, inputs=[form.fields["sampling"], *preset_fields], outputs=preset_fields
        )
        form.refresh.click(lambda: gr.update(choices=list_styles(styles_dir)), outputs=[form.saved])
        form.save_btn.click(
            _save_style_handler(gr, service, styles_dir),
            inputs=[form.files, form.style_name, form.fields["style_weights"]],
            outputs=[form.save_status, form.saved],
            api_name="save_style",
        )
        demo.load(lambda: gr.update(choices=list_styles(styles_dir)), outputs=[form.saved])
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


def mount_ui(
    app,
    service: GenerationService,
    *,
    path: str = "/ui",
    api_key: str | None = None,
    output_dir: str | os.PathLike | None = None,
    policy=None,
):
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
    gr.mount_gradio_app(
        app,
        demo,
        path=path,
        auth=auth,
        max_file_size=service.limits.max_upload_bytes,
        auth_message="Enter the server's API key as the password (any user name)." if api_key else None,
        footer_links=["api"],
        allowed_paths=[],
        blocked_paths=_blocked_paths(service, uploads),
    )
    # Gradio checks the files a client names only once an app has "launched" (Blocks.launch sets
    # this; mount_gradio_app does not, as of gradio 6.31): without it, a descriptor naming any server
    # file is copied into the cache and served. is_running also stops it marking client SVG paths static.
    demo.has_launched = True
    demo.is_running = True
    if policy is not None:
        gradio_app = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == path.rstrip("/"))
        policy.upload_dirs = uploads
        policy.ui_cookie_names = (
            f"access-token-{gradio_app.cookie_id}",
            f"access-token-unsecure-{gradio_app.cookie_id}",
        )
        policy.ui_tokens = gradio_app.tokens
    return app
