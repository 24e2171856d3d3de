"""The HTTP API's routes (``/v1/...``), one module per resource, each an ``APIRouter``.

Routes reach the service and the request policy through dependencies (``common.ServiceDep``,
read from ``app.state``), so the same routers serve any app ``app.create_app`` builds.
"""

from __future__ import annotations

from fastapi import APIRouter

from ..http_errors import COMMON_ERRORS
from . import generate, info, jobs, styles

router = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
for module in (generate, jobs, info, styles):
    router.include_router(module.router)

__all__ = ["router"]
