"""The HTTP app: FastAPI over a ``GenerationService`` (OpenAPI schema and a try-it page at ``/docs``).

Endpoints (all under ``/v1``, one module each in ``routes/``; with an API key set, each needs
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``):

- ``POST /v1/generate``: multipart form: ``params`` (JSON of ``GenerateRequest`` fields) and
  ``images`` (style image files, several allowed); to stylize a content image also ``content``,
  ``mask`` (inpainting), ``style_masks`` (one per style image, regional styles) and
  ``control_images`` (for ControlNets that do not derive theirs from the content image); for the
  leakage controls ``composition`` (layout reference) and ``negative_style`` (negative image). The
  request's image fields then hold the label ``"<upload>"`` (filled in by the server); a request
  never names a file. ``?wait=true`` answers with the images (base64 PNG + parameters);
  otherwise 202 with a job id to poll.
- ``GET /v1/jobs/{id}`` (status, progress, results, warnings), ``GET /v1/jobs/{id}/images/{i}.png``,
  ``DELETE /v1/jobs/{id}`` (cancel: a queued job is dropped, a running one stops at its next step).
- ``GET /v1/blocks``, ``GET/POST /v1/styles``, ``DELETE /v1/styles/{name}``, ``GET /v1/health``.

Every error is JSON ``{"error": {"status", "code", "message"}}`` with a one-line message, declared
in the OpenAPI schema for every operation (``http_errors``). Who may call what (Host, Origin, the
key) is decided in front of all routes by ``policy.RequestPolicy``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from .. import __version__
from .http_errors import add_error_handlers
from .openapi import document_schema
from .policy import BodySizeLimit, Policy, RequestPolicy, default_allowed_hosts
from .routes import router
from .service import GenerationService


def create_app(
    service: GenerationService,
    *,
    api_key: str | None = None,
    ui: bool = True,
    ui_path: str = "/ui",
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
    bind_host: str = "127.0.0.1",
) -> FastAPI:
    """The FastAPI app (and, with ``ui``, the Gradio UI mounted at ``ui_path``). Starts the workers.

    ``allowed_hosts``: the Host names the server answers to (default: localhost names and
    ``bind_host``; ``["*"]``: any); ``allowed_origins``: other origins allowed to make cross-origin
    requests (CORS; none by default). With ``api_key``, every route but the health check needs it.
    """
    # 1. The workers, and who may call what
    service.start()
    policy = Policy(
        api_key=api_key,
        allowed_hosts=allowed_hosts or default_allowed_hosts(bind_host),
        allowed_origins=list(allowed_origins or []),
        ui_path=ui_path,
    )
    # 2. The app: its state (the routes' dependencies), middleware (policy outermost), errors, routes
    app = FastAPI(
        title="InstantStyle",
        version=__version__,
        description="Style-preserving text-to-image on SDXL (InstantStyle). Upload style images, send a "
        "prompt, get PNGs with their parameters embedded. "
        + (
            "An API key is required on every route but `GET /v1/health`: `Authorization: Bearer KEY` "
            "or `X-API-Key: KEY`."
            if api_key
            else ""
        ),
    )
    app.state.service = service
    app.state.policy = policy
    app.add_middleware(BodySizeLimit, max_body_bytes=service.limits.max_body_bytes)
    app.add_middleware(RequestPolicy, policy=policy)  # outermost: before anything else runs
    add_error_handlers(app)
    app.include_router(router)
    document_schema(app, api_key_required=bool(api_key))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(f"{ui_path}/" if ui else "/docs")

    # 3. The web UI on the same app, queue and policy
    if ui:
        from .ui import mount_ui

        mount_ui(app, service, path=ui_path, api_key=api_key, policy=policy)
    return app
