"""``/v1/jobs/{id}``: a job's status, progress and results, its images and preview, and cancelling it."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from ...errors import InstantStyleError
from ..http_errors import error_docs, error_response, scrub_paths
from ..jobs import DONE, FAILED, QUEUED, Job, UnknownJobError
from ..service import GenerationService
from .common import ServiceDep

router = APIRouter()


def _image_entry(job: Job, result, with_data: bool) -> dict:
    p = result.params
    entry = {
        "index": result.index,
        "seed": p.get("seed"),
        "width": p.get("width"),
        "height": p.get("height"),
        "url": f"/v1/jobs/{job.id}/images/{result.index}.png",
        "metadata": p,
    }
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


@router.get("/jobs/{job_id}", summary="A job's status, progress and results", responses=error_docs(404))
async def get_job(
    service: ServiceDep,
    job_id: str,
    images: Annotated[bool, Query(description="include base64 PNG data")] = True,
):
    return job_payload(service, service.get(job_id), images=images)


@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a job: a queued one is dropped, a running one stops at its next denoising step",
    responses=error_docs(404, 409),
)
async def cancel_job(service: ServiceDep, job_id: str):
    job = service.get(job_id)
    if job.status in (DONE, FAILED):
        return error_response(409, f"job {job_id} already finished ({job.status}); nothing to cancel")
    service.cancel(job)
    return job_payload(service, job, images=False)


@router.get(
    "/jobs/{job_id}/images/{index}.png",
    summary="One result as a PNG file (parameters embedded)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_docs(404)},
)
async def get_job_image(service: ServiceDep, job_id: str, index: Annotated[int, Path(ge=0)]):
    job = service.get(job_id)
    if job.status != DONE:
        raise InstantStyleError(f"job {job_id} is {job.status}; images exist once it is done")
    if index >= len(job.results):
        raise UnknownJobError(f"job {job_id} has {len(job.results)} images; no index {index}")
    return Response(job.results[index].png, media_type="image/png")


@router.get(
    "/jobs/{job_id}/preview.png",
    summary="The latest denoising-step preview of a running job",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_docs(404)},
)
async def get_job_preview(service: ServiceDep, job_id: str):
    job = service.get(job_id)
    if job.preview is None:
        raise UnknownJobError(f"job {job_id} has no preview ({job.status}); previews exist while it runs")
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(job.preview).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")
