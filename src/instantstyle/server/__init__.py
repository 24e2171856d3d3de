"""Serving: one process, models loaded once, a bounded job queue, an HTTP API and a web UI.

- ``limits``: what one request may cost (``Limits``), the job timeout, failed-key attempt limiting;
- ``uploads`` and ``checks``: what a request may bring and ask for, refused before it is queued;
- ``jobs``: the job model, the bounded queue, the workers, cancellation and the drain on shutdown;
- ``service``: ``GenerationService``, the queue over the loaded models (ControlNets, checks, work);
- ``policy``: who may reach what (Host, Origin, the key, UI file descriptors, body size);
- ``http_errors`` (the one error shape), ``routes/`` (one ``APIRouter`` per resource), ``openapi``;
- ``app``: ``create_app(service, ...)``, the FastAPI app (``/v1/...``, OpenAPI at ``/docs``);
- ``ui``: the Gradio UI, mounted on the same app.

Nothing here is imported by ``import instantstyle``; fastapi/gradio load only with their modules
(``instantstyle.server.create_app`` imports them on first use).
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {"create_app": "app", "GenerationService": "service", "Limits": "limits", "Policy": "policy"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
