"""The HTTP API: FastAPI over a ``GenerationService`` (OpenAPI schema and a try-it page at ``/docs``).

Endpoints (all under ``/v1``; with an API key set, each needs ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``):

- ``POST /v1/generate``: multipart form: ``params`` (JSON of ``GenerateRequest`` fields) and
  ``images`` (style image files, several allowed); to stylize a content image also ``content``,
  ``mask`` (inpainting), ``style_masks`` (one per style image, regional styles) and
  ``control_images`` (for ControlNets that do not derive theirs from the content image); for the
  leakage controls ``composition`` (layout reference) and ``negative_style`` (negative image). The
  request's image fields then hold the label ``"<upload>"`` (filled in by the server); a request
  never names a file. ``?wait=true`` answers with the images (base64 PNG + parameters);
  otherwise 202 with a job id to poll.
- ``GET /v1/jobs/{id}`` (status, progress, results), ``GET /v1/jobs/{id}/images/{i}.png``,
  ``DELETE /v1/jobs/{id}`` (cancel: a queued job is dropped, a running one stops at its next step).
- ``GET /v1/blocks``, ``GET/POST /v1/styles``, ``DELETE /v1/styles/{name}``, ``GET /v1/health``.

Every error is JSON ``{"error": {"status", "code", "message"}}`` with a one-line message, declared
in the OpenAPI schema for every operation. Who may call what (Host, Origin, the key) is decided
in front of all routes by ``policy.RequestPolicy``.
"""

import asyncio
import base64
import json
import logging
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import GenerateRequest
from ..errors import InstantStyleError
from .policy import Policy, RequestPolicy, api_key_ok, default_allowed_hosts, scrub_paths
from .service import (
    CANCELLED,
    DONE,
    FAILED,
    MAX_CONTROL_IMAGES,
    QUEUED,
    GenerationService,
    Job,
    JobFailedError,
    QueueFullError,
    ShuttingDownError,
    UnknownJobError,
    Uploads,
    UploadTooLargeError,
    decode_upload,
    fill_image_fields,
    params_dict,
    parse_request,
)

log = logging.getLogger("instantstyle.server")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 422: "invalid_request", 429: "queue_full",
          500: "internal_error", 503: "unavailable", 504: "timeout"}
# A failed or cancelled job, answered to a waiting client: its error type -> HTTP status.
_JOB_ERROR_STATUS = {"bad_request": 400, "out_of_memory": 503, "internal": 500, "shutdown": 503,
                     "cancelled": 409, "timeout": 504}


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. retry_after (429), job_id (a failed job)

    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error this API answers: one shape, one line of message."""

    error: ErrorBody


def _errors(*statuses: int) -> dict:
    text = {400: "bad input (one line naming the field and the fix)", 401: "missing or wrong API key",
            403: "cross-origin request refused", 404: "no such job, image or style",
            409: "conflict: the style exists, or the job was cancelled or already finished",
            413: "an upload or the body is over the byte limit", 422: "a form field is missing or malformed",
            429: "the queue is full, or too many failed key attempts; see Retry-After",
            503: "the server is shutting down, or the job ran out of memory",
            504: "the job ran past the server's time limit"}
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


COMMON_ERRORS = _errors(400, 401, 403, 413, 422, 429, 503)

PARAMS_HELP = (
    "JSON object of request fields (the GenerateRequest schema below), e.g. "
    '{"prompt": "a cat", "seed": 1, "mode": "style", "content_prompt": "a dog"}. '
    "`style` may only hold saved styles as \"@name\"; images are sent as files. "
    "`style_weights` has one weight per uploaded image, then one per saved style. "
    "To stylize a content image, upload it as `content` and set `task` (controlnet, img2img, inpaint, plus) "
    "or `control` ([\"canny\"], [\"tile\"] or a ControlNet the server allows by name, see GET /v1/health "
    "`controls`); `content`, `mask`, `style_masks` and `control_image` are filled in by the server from the "
    "uploads (leave them out, or send \"<upload>\"). `method`: instantstyle, ip-adapter, style-aligned, "
    "visual-style-prompting (b-lora is CLI-only)."
)


def error_response(status: int, message: str, *, code: str | None = None, headers: dict | None = None,
                   **extra) -> JSONResponse:
    body = {"error": {"status": status, "code": code or _CODES.get(status, "error"), "message": scrub_paths(message),
                      **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI, in front of every ``/v1`` route: the body size, BEFORE any parsing (the key and
    the origin are checked further out, by ``RequestPolicy``).

    Declared bodies over the limit are refused from ``Content-Length``; a streamed body is
    counted as it arrives and cut off with 413 once over the limit.
    """

    def __init__(self, app, *, max_body_bytes: int, prefix: str = "/v1/"):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send, int(length))

        state = {"seen": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body_bytes:
                    state["over"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            if state["over"]:  # whatever the app answers to a cut-off body, the client gets 413
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._too_large(scope, receive, send, state["seen"])
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not state["started"]:
                await self._too_large(scope, receive, send, state["seen"])

    async def _too_large(self, scope, receive, send, size: int):
        response = error_response(413, f"request body is {size}+ bytes, over the limit of {self.max_body_bytes} "
                                       "bytes; send fewer or smaller images (server flags --max-upload-bytes, "
                                       "--max-style-images)")
        await response(scope, receive, send)


def _image_entry(job: Job, result, with_data: bool) -> dict:
    p = result.params
    entry = {"index": result.index, "seed": p.get("seed"), "width": p.get("width"), "height": p.get("height"),
             "url": f"/v1/jobs/{job.id}/images/{result.index}.png", "metadata": p}
    if with_data:
        entry["png_base64"] = base64.b64encode(result.png).decode("ascii")
    return entry


def job_payload(service: GenerationService, job: Job, *, images: bool = True) -> dict:
    payload = job.summary()
    if payload["error"]:
        payload["error"]["message"] = scrub_paths(payload["error"]["message"])
    payload["preview_url"] = f"/v1/jobs/{job.id}/preview.png" if job.preview is not None else None
    if job.request is not None:
        payload["request"] = job.request.model_dump()
    if job.status == QUEUED:
        payload["queue_position"] = service.position(job)
    payload["images"] = [_image_entry(job, r, images) for r in job.results] if job.status == DONE else []
    return payload


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (its body is read by then, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_job(job: Job, timeout: float, request: Request | None = None,
                       service: GenerationService | None = None) -> bool:
    """Await a job from the event loop without holding a thread; False on timeout.

    With ``request``, a client that disconnects while waiting has its job cancelled (``service``):
    nobody is left to take the images, so the worker goes on to the next job.
    """
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def _done(_job: Job) -> None:
        def _set() -> None:
            if not finished.done():
                finished.set_result(True)

        try:
            loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the loop is gone (server stopping); nobody is waiting any more
            pass

    job.add_done_callback(_done)
    gone = asyncio.ensure_future(_disconnected(request)) if request is not None else None
    try:
        done, _ = await asyncio.wait([finished] + ([gone] if gone else []), timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        if gone is not None:
            gone.cancel()
    if finished in done:
        return True
    if gone is not None and gone in done and service is not None:
        service.cancel(job, "the client disconnected before the job finished")
    return False


def _failed_job_response(job: Job) -> JSONResponse:
    status = _JOB_ERROR_STATUS.get(job.error_type or "internal", 500)
    return error_response(status, job.error or "job failed", code=job.error_type, job_id=job.id)


def _files(files) -> list[UploadFile]:
    if files is None:
        return []
    return [f for f in (files if isinstance(files, list) else [files]) if f is not None]


async def _read_uploads(files, service: GenerationService, *, what: str = "style image", mask: bool = False,
                        max_count: int | None = None, field: str = "images") -> list:
    """Uploaded files -> decoded PIL images: count, then bytes (read at most limit+1), then pixels."""
    files = _files(files)
    limits = service.limits
    max_count = limits.max_style_images if max_count is None else max_count
    if len(files) > max_count:
        raise InstantStyleError(f"{len(files)} files uploaded as '{field}', over the limit of {max_count}; "
                                "send fewer" + (" (server flag --max-style-images)" if field in
                                                ("images", "style_masks") else ""))
    images = []
    for i, f in enumerate(files):
        name = f.filename or f"upload {i}"
        if f.size is not None and f.size > limits.max_upload_bytes:
            raise UploadTooLargeError(f"{what} {name!r} is {f.size} bytes, over the limit of "
                                      f"{limits.max_upload_bytes} bytes; send a smaller file "
                                      "(server flag --max-upload-bytes)")
        data = await f.read(limits.max_upload_bytes + 1)
        images.append(await run_in_threadpool(decode_upload, data, name, limits, what=what, mask=mask))
    return images


def create_app(service: GenerationService, *, api_key: str | None = None, ui: bool = True,
               ui_path: str = "/ui", allowed_hosts: list[str] | None = None,
               allowed_origins: list[str] | None = None, bind_host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app (and, with ``ui``, the Gradio UI mounted at ``ui_path``). Starts the workers.

    ``allowed_hosts``: the Host names the server answers to (default: localhost names and
    ``bind_host``; ``["*"]``: any); ``allowed_origins``: other origins allowed to make cross-origin
    requests (CORS; none by default). With ``api_key``, every route but the health check needs it.
    """
    from ..embeddings import StyleExistsError

    service.start()
    limits = service.limits
    policy = Policy(api_key=api_key, allowed_hosts=allowed_hosts or default_allowed_hosts(bind_host),
                    allowed_origins=list(allowed_origins or []), ui_path=ui_path)
    app = FastAPI(
        title="InstantStyle",
        version=__version__,
        description="Style-preserving text-to-image on SDXL (InstantStyle). Upload style images, send a "
                    "prompt, get PNGs with their parameters embedded. "
                    + ("An API key is required on every route but `GET /v1/health`: `Authorization: Bearer KEY` "
                       "or `X-API-Key: KEY`." if api_key else ""),
    )
    app.state.service = service
    app.state.policy = policy
    app.add_middleware(GuardMiddleware, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(RequestPolicy, policy=policy)  # outermost: before anything else runs

    # ------------------------------------------------------------------ errors as one JSON shape

    @app.exception_handler(QueueFullError)
    async def _queue_full(_request, exc: QueueFullError):
        return error_response(429, str(exc), headers={"Retry-After": str(exc.retry_after)},
                              retry_after=exc.retry_after)

    @app.exception_handler(UploadTooLargeError)
    async def _too_large(_request, exc):
        return error_response(413, str(exc))

    @app.exception_handler(UnknownJobError)
    async def _unknown_job(_request, exc):
        return error_response(404, str(exc))

    @app.exception_handler(ShuttingDownError)
    async def _stopping(_request, exc):
        return error_response(503, str(exc), code="shutdown", headers={"Retry-After": "30"})

    @app.exception_handler(StyleExistsError)
    async def _style_exists(_request, exc):
        return error_response(409, "that style already exists; send overwrite=true to replace it")

    @app.exception_handler(JobFailedError)
    async def _job_failed(_request, exc: JobFailedError):
        return _failed_job_response(exc.job)

    @app.exception_handler(InstantStyleError)
    async def _bad_input(_request, exc):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(parts) + " (see /docs for the request format)")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(_request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}; the server keeps running")

    # ------------------------------------------------------------------ routes

    v1 = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
    queued_response = {202: {"description": "queued (or still running at the wait's end); poll GET /v1/jobs/{id}",
                             "content": {"application/json": {}}}}

    @v1.post("/generate", status_code=200, summary="Generate images in the style of uploaded images",
             responses={**queued_response, **_errors(409, 504)})
    async def generate(
        request: Request,
        params: Annotated[str, Form(min_length=1, description=PARAMS_HELP,
                                    examples=['{"prompt": "a lighthouse at dusk", "seed": 1}'])],
        images: Annotated[list[UploadFile] | None, File(description="style reference images (PNG, JPEG, WebP...)")]
        = None,
        content: Annotated[UploadFile | None, File(description="content image to stylize (sets content)")] = None,
        mask: Annotated[UploadFile | None, File(description="inpainting mask, single-channel, the content's size")]
        = None,
        style_masks: Annotated[list[UploadFile] | None, File(
            description="regional styles: one single-channel mask per style image, in the same order")] = None,
        control_images: Annotated[list[UploadFile] | None, File(
            description="control images, one per control entry (or per \"<upload>\" entry of control_image)")]
        = None,
        composition: Annotated[UploadFile | None, File(
            description="a second reference whose layout goes into the layout block (sets composition)")] = None,
        negative_style: Annotated[UploadFile | None, File(
            description="negative style image for the unconditional branch (sets negative_style)")] = None,
        wait: Annotated[bool, Query(description="answer with the images when done instead of a job id")] = False,
        timeout: Annotated[float | None, Query(gt=0, description="longest wait in seconds (default: server's)")]
        = None,
    ):
        n_uploads = len(_files(images))
        fields = fill_image_fields(params_dict(params), content=bool(_files(content)), mask=bool(_files(mask)),
                                   style_masks=len(_files(style_masks)), control_images=len(_files(control_images)),
                                   composition=bool(_files(composition)), negative_style=bool(_files(negative_style)))
        req = parse_request(fields, style_images=n_uploads)
        await run_in_threadpool(service.check, req, style_images=n_uploads)
        style_images = await _read_uploads(images, service)
        uploads = Uploads(
            content=next(iter(await _read_uploads(content, service, what="content image", field="content")), None),
            mask=next(iter(await _read_uploads(mask, service, what="mask", mask=True, field="mask")), None),
            style_masks=await _read_uploads(style_masks, service, what="style mask", mask=True, field="style_masks"),
            control_images=await _read_uploads(control_images, service, what="control image",
                                               max_count=MAX_CONTROL_IMAGES, field="control_images"),
            composition=next(iter(await _read_uploads(composition, service, what="composition image",
                                                      field="composition")), None),
            negative_style=next(iter(await _read_uploads(negative_style, service, what="negative style image",
                                                         field="negative_style")), None),
        )
        await run_in_threadpool(service.check_inputs, req, uploads)
        job = service.submit_generate(req, style_images, uploads=uploads)
        queued = JSONResponse(job_payload(service, job), status_code=202,
                              headers={"Location": f"/v1/jobs/{job.id}"})
        if not wait:
            return queued
        if not await wait_for_job(job, min(timeout or limits.max_wait_s, limits.max_wait_s), request, service):
            return JSONResponse(job_payload(service, job), status_code=202,
                                headers={"Location": f"/v1/jobs/{job.id}"})
        if job.status in (FAILED, CANCELLED):
            return _failed_job_response(job)
        return job_payload(service, job)

    @v1.get("/jobs/{job_id}", summary="A job's status, progress and results", responses=_errors(404))
    async def get_job(job_id: str, images: Annotated[bool, Query(description="include base64 PNG data")] = True):
        return job_payload(service, service.get(job_id), images=images)

    @v1.delete("/jobs/{job_id}", summary="Cancel a job: a queued one is dropped, a running one stops at its "
               "next denoising step", responses=_errors(404, 409))
    async def cancel_job(job_id: str):
        job = service.get(job_id)
        if job.status in (DONE, FAILED):
            return error_response(409, f"job {job_id} already finished ({job.status}); nothing to cancel")
        service.cancel(job)
        return job_payload(service, job, images=False)

    @v1.get("/jobs/{job_id}/images/{index}.png", summary="One result as a PNG file (parameters embedded)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **_errors(404)})
    async def get_job_image(job_id: str, index: Annotated[int, Path(ge=0)]):
        job = service.get(job_id)
        if job.status != DONE:
            raise InstantStyleError(f"job {job_id} is {job.status}; images exist once it is done")
        if index >= len(job.results):
            raise UnknownJobError(f"job {job_id} has {len(job.results)} images; no index {index}")
        return Response(job.results[index].png, media_type="image/png")

    @v1.get("/jobs/{job_id}/preview.png", summary="The latest denoising-step preview of a running job",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **_errors(404)})
    async def get_job_preview(job_id: str):
        job = service.get(job_id)
        if job.preview is None:
            raise UnknownJobError(f"job {job_id} has no preview ({job.status}); previews exist while it runs")
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(job.preview).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @v1.get("/blocks", summary="The UNet's cross-attention modules and the mode presets")
    async def get_blocks():
        from ..blocks import describe, preset_table
        from ..config import MODES

        model = service.model
        sample_size = model.pipe.unet.config.sample_size
        return {"base": model.ids.get("base"), "modules": describe(model.modules, sample_size),
                "presets": preset_table(), "modes": list(MODES)}

    @v1.get("/styles", summary="Saved styles (use them as \"@name\" in style)")
    async def get_styles():
        return {"styles": await run_in_threadpool(_list_styles, service)}

    @v1.post("/styles", status_code=201, summary="Encode uploaded images once and save them as a style",
             responses=_errors(409))
    async def post_style(
        name: Annotated[str, Form(description="1-64 letters, digits, '_', '-', '.'")],
        images: Annotated[list[UploadFile], File(description="reference images")],
        weights: Annotated[str | None, Form(description="JSON list or comma-separated, one per image")] = None,
        overwrite: Annotated[bool, Form()] = False,
    ):
        from ..embeddings import combine_styles, save_style, style_path

        directory = service.model.styles.styles_directory
        path = style_path(name, directory)  # checks the name: no request leaves the styles directory
        if path.exists() and not overwrite:  # checked again, atomically, when it is written
            return error_response(409, f"style '{name}' already exists; send overwrite=true to replace it")
        w = _parse_weights(weights)
        pil = await _read_uploads(images, service)
        if not pil:
            raise InstantStyleError("no image uploaded; send one or more files in 'images'")
        if w is not None and len(w) != len(pil):
            raise InstantStyleError(f"weights has {len(w)} values for {len(pil)} images")

        style = await run_in_threadpool(service.call, lambda model: model.encode_style(pil, w), kind="style")
        combine_styles(style.embeds, style.weights)  # validates the weights (>= 0, not all zero)
        await run_in_threadpool(save_style, style, name, directory, overwrite)
        return _style_entry(style)

    @v1.delete("/styles/{name}", status_code=204, summary="Delete a saved style", responses=_errors(404))
    async def delete_style_route(name: str):
        from ..embeddings import style_path

        path = style_path(name, service.model.styles.styles_directory)
        try:
            path.unlink()  # one step: of two concurrent deletes, one gets 204 and the other 404
        except FileNotFoundError:
            return error_response(404, f"style '{name}' not found")
        return Response(status_code=204)

    @v1.get("/health", summary="Workers, queue and model identifiers (open without the key: then only status)")
    async def health(request: Request):
        info = {**service.health(), "version": __version__, "limits": limits.as_dict(),
                "api_key_required": bool(api_key)}
        if api_key and not api_key_ok(request.headers, api_key):
            info = {"status": info["status"], "api_key_required": True}
        return JSONResponse(info, status_code=200 if info["status"] == "ok" else 503)

    app.include_router(v1)
    _document_schema(app, api_key_required=bool(api_key))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(f"{ui_path}/" if ui else "/docs")

    if ui:
        from .ui import mount_ui

        mount_ui(app, service, path=ui_path, api_key=api_key, policy=policy)
    return app


def _document_schema(app: FastAPI, *, api_key_required: bool) -> None:
    """OpenAPI extras: ``GenerateRequest`` (sent as the JSON ``params`` form field), and the API-key
    security schemes (required on every operation but the health check when the server has a key)."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["GenerateRequest"] = \
                GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            _mark_files_binary(components.get("schemas", {}))
            if api_key_required:
                schema["security"] = [{"bearer": []}, {"apiKey": []}]
                for operation in schema.get("paths", {}).get("/v1/health", {}).values():
                    operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _mark_files_binary(node) -> None:
    """File fields (``contentMediaType: application/octet-stream``) also get ``format: binary``,
    the OpenAPI 3.0 spelling most clients and fuzzers look for to send a file part; an optional
    file field is declared as the file (multipart has no null: a part is sent or left out)."""
    if isinstance(node, dict):
        for prop in (node.get("properties") or {}).values():
            options = prop.get("anyOf") if isinstance(prop, dict) else None
            if options and len(options) == 2 and {"type": "null"} in options:
                (kept,) = [o for o in options if o != {"type": "null"}]
                if "application/octet-stream" in json.dumps(kept):
                    del prop["anyOf"]
                    prop.update(kept)
        if node.get("contentMediaType") == "application/octet-stream" and node.get("type") == "string":
            node.setdefault("format", "binary")
        for value in node.values():
            _mark_files_binary(value)
    elif isinstance(node, list):
        for value in node:
            _mark_files_binary(value)


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None or not text.strip():
        return None
    try:
        values = json.loads(text) if text.strip().startswith("[") else [float(x) for x in text.split(",")]
        return [float(v) for v in values]
    except (ValueError, TypeError):
        raise InstantStyleError(f"weights {text!r}: give numbers, e.g. [0.7, 0.3] or 0.7,0.3") from None


def _style_entry(style) -> dict:
    return {"name": style.name, "images": len(style.weights), "weights": style.weights,
            "encoder_id": style.encoder_id, "created": style.created}


def _list_styles(service: GenerationService) -> list[dict]:
    """The saved styles; one deleted while listing is left out, a damaged one says so (no server path)."""
    from ..embeddings import list_styles, load_style, style_path

    directory = service.model.styles.styles_directory
    out = []
    for name in list_styles(directory):
        try:
            out.append(_style_entry(load_style(name, directory)))
        except InstantStyleError:
            if style_path(name, directory).is_file():
                out.append({"name": name, "error": "the style file is damaged; save the style again"})
    return out


__all__ = ["create_app", "GuardMiddleware", "api_key_ok", "error_response"]
