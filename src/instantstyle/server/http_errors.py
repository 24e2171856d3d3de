"""The HTTP API's one error shape, ``{"error": {"status", "code", "message"}}``, and where each error maps.

Every refusal (request policy, body size, validation, a failed job) goes through ``error_response``,
whose message never names a server directory (``scrub_paths``). ``add_error_handlers`` maps the
library's and the service's exceptions to their status codes; ``error_docs`` declares the same
shape in the OpenAPI schema.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InstantStyleError
from .jobs import Job, JobFailedError, QueueFullError, ShuttingDownError, UnknownJobError
from .uploads import UploadTooLargeError

log = logging.getLogger("instantstyle.server")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
# A failed or cancelled job, answered to a waiting client: its error type -> HTTP status.
_JOB_ERROR_STATUS = {
    "bad_request": 400,
    "out_of_memory": 503,
    "internal": 500,
    "shutdown": 503,
    "cancelled": 409,
    "timeout": 504,
}
_DESCRIPTIONS = {
    400: "bad input (one line naming the field and the fix)",
    401: "missing or wrong API key",
    403: "cross-origin request refused",
    404: "no such job, image or style",
    409: "conflict: the style exists, or the job was cancelled or already finished",
    413: "an upload or the body is over the byte limit",
    422: "a form field is missing or malformed",
    429: "the queue is full, or too many failed key attempts; see Retry-After",
    503: "the server is shutting down, or the job ran out of memory",
    504: "the job ran past the server's time limit",
}


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. retry_after (429), job_id (a failed job)

    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error this API answers: one shape, one line of message."""

    error: ErrorBody


def error_docs(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, all of the one shape."""
    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS[s]} for s in statuses}


COMMON_ERRORS = error_docs(400, 401, 403, 413, 422, 429, 503)


def scrub_paths(message: str) -> str:
    """``message`` with this server's directories (saved styles, caches, working and home
    directories, temp, the Python prefix) replaced by ``<server>``: HTTP clients never see them."""
    import sys
    import tempfile
    from pathlib import Path

    roots = {
        os.getcwd(),
        str(Path.home()),
        tempfile.gettempdir(),
        sys.prefix,
        os.environ.get("INSTANTSTYLE_STYLES") or "",
        os.environ.get("INSTANTSTYLE_CACHE") or "",
        os.environ.get("HF_HOME") or "",
    }
    for root in sorted((r for r in roots if len(r) > 1), key=len, reverse=True):
        message = message.replace(os.path.realpath(root), "<server>").replace(root, "<server>")
    return message


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    body = {
        "error": {
            "status": status,
            "code": code or _CODES.get(status, "error"),
            "message": scrub_paths(message),
            **extra,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def failed_job_response(job: Job) -> JSONResponse:
    status = _JOB_ERROR_STATUS.get(job.error_type or "internal", 500)
    return error_response(status, job.error or "job failed", code=job.error_type, job_id=job.id)


async def _queue_full(_request, exc: QueueFullError):
    return error_response(
        429, str(exc), headers={"Retry-After": str(exc.retry_after)}, retry_after=exc.retry_after
    )


async def _job_failed(_request, exc: JobFailedError):
    return failed_job_response(exc.job)


async def _http(_request, exc: StarletteHTTPException):
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _invalid(_request, exc: RequestValidationError):
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return error_response(422, "; ".join(parts) + " (see /docs for the request format)")


async def _crash(_request, exc: Exception):
    log.exception("unhandled error")
    return error_response(500, f"internal error: {type(exc).__name__}; the server keeps running")


def add_error_handlers(app: FastAPI) -> None:
    """Every exception a route can raise -> its status, in the one error shape."""
    from ..embeddings import StyleExistsError

    def simple(status: int, message: str | None = None, **kw):
        async def handler(_request, exc):
            return error_response(status, message or str(exc), **kw)

        return handler

    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(UploadTooLargeError, simple(413))
    app.add_exception_handler(UnknownJobError, simple(404))
    app.add_exception_handler(ShuttingDownError, simple(503, code="shutdown", headers={"Retry-After": "30"}))
    app.add_exception_handler(
        StyleExistsError, simple(409, "that style already exists; send overwrite=true to replace it")
    )
    app.add_exception_handler(JobFailedError, _job_failed)
    app.add_exception_handler(InstantStyleError, simple(400))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
