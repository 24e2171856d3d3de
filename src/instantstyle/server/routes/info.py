"""``/v1/blocks`` (the UNet's attention modules and the presets) and ``/v1/health``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ... import __version__
from ..policy import api_key_ok
from .common import PolicyDep, ServiceDep

router = APIRouter()


@router.get("/blocks", summary="The UNet's cross-attention modules and the mode presets")
async def get_blocks(service: ServiceDep):
    from ...blocks import describe, family_of, preset_table
    from ...config import MODES

    model = service.model
    sample_size = model.pipe.unet.config.sample_size
    return {
        "base": model.ids.get("base"),
        "family": family_of(model.modules),
        "modules": describe(model.modules, sample_size),
        "presets": preset_table(family_of(model.modules)),
        "modes": list(MODES),
    }


@router.get(
    "/health", summary="Workers, queue and model identifiers (open without the key: then only status)"
)
async def health(request: Request, service: ServiceDep, policy: PolicyDep):
    api_key = policy.api_key
    info = {
        **service.health(),
        "version": __version__,
        "limits": service.limits.as_dict(),
        "api_key_required": bool(api_key),
    }
    if api_key and not api_key_ok(request.headers, api_key):
        info = {"status": info["status"], "api_key_required": True}
    return JSONResponse(info, status_code=200 if info["status"] == "ok" else 503)
