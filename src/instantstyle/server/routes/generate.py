"""``POST /v1/generate``: a request and its uploads, checked, queued, and (with ``?wait=true``) answered.

Checks run in order before anything is queued: the ``params`` JSON, the request's image fields
against the files that came, the request against the server's rules (``service.check``), the
uploads decoded (bytes, pixels), then the content images read as the library will.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..checks import params_dict, parse_request
from ..http_errors import error_docs, failed_job_response
from ..jobs import CANCELLED, FAILED, Job
from ..limits import MAX_CONTROL_IMAGES
from ..service import GenerationService
from ..uploads import Uploads, fill_image_fields
from .common import ServiceDep, files_of, read_upload, read_uploads
from .jobs import job_payload

router = APIRouter()

PARAMS_HELP = (
    "JSON object of request fields (the GenerateRequest schema below), e.g. "
    '{"prompt": "a cat", "seed": 1, "mode": "style", "content_prompt": "a dog"}. '
    '`style` may only hold saved styles as "@name"; images are sent as files. '
    "`style_weights` has one weight per uploaded image, then one per saved style. "
    "To stylize a content image, upload it as `content` and set `task` (controlnet, img2img, inpaint, plus) "
    'or `control` (["canny"], ["tile"] or a ControlNet the server allows by name, see GET /v1/health '
    "`controls`); `content`, `mask`, `style_masks` and `control_image` are filled in by the server from the "
    'uploads (leave them out, or send "<upload>"). `method`: instantstyle, ip-adapter, style-aligned, '
    "visual-style-prompting (b-lora is CLI-only)."
)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (its body is read by then, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_job(
    job: Job, timeout: float, request: Request | None = None, service: GenerationService | None = None
) -> bool:
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
        done, _ = await asyncio.wait(
            [finished] + ([gone] if gone else []), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if gone is not None:
            gone.cancel()
    if finished in done:
        return True
    if gone is not None and gone in done and service is not None:
        service.cancel(job, "the client disconnected before the job finished")
    return False


_QUEUED = {
    202: {
        "description": "queued (or still running at the wait's end); poll GET /v1/jobs/{id}",
        "content": {"application/json": {}},
    }
}


@router.post(
    "/generate",
    status_code=200,
    summary="Generate images in the style of uploaded images",
    responses={**_QUEUED, **error_docs(409, 504)},
)
async def generate(
    request: Request,
    service: ServiceDep,
    params: Annotated[
        str,
        Form(
            min_length=1, description=PARAMS_HELP, examples=['{"prompt": "a lighthouse at dusk", "seed": 1}']
        ),
    ],
    images: Annotated[
        list[UploadFile] | None, File(description="style reference images (PNG, JPEG, WebP...)")
    ] = None,
    content: Annotated[UploadFile | None, File(description="content image to stylize (sets content)")] = None,
    mask: Annotated[
        UploadFile | None, File(description="inpainting mask, single-channel, the content's size")
    ] = None,
    style_masks: Annotated[
        list[UploadFile] | None,
        File(description="regional styles: one single-channel mask per style image, in the same order"),
    ] = None,
    control_images: Annotated[
        list[UploadFile] | None,
        File(description='control images, one per control entry (or per "<upload>" entry of control_image)'),
    ] = None,
    composition: Annotated[
        UploadFile | None,
        File(description="a second reference whose layout goes into the layout block (sets composition)"),
    ] = None,
    negative_style: Annotated[
        UploadFile | None,
        File(description="negative style image for the unconditional branch (sets negative_style)"),
    ] = None,
    wait: Annotated[bool, Query(description="answer with the images when done instead of a job id")] = False,
    timeout: Annotated[
        float | None, Query(gt=0, description="longest wait in seconds (default: server's)")
    ] = None,
):
    # 1. The params JSON, with the image fields filled from the files that came
    n_uploads = len(files_of(images))
    fields = fill_image_fields(
        params_dict(params),
        content=bool(files_of(content)),
        mask=bool(files_of(mask)),
        style_masks=len(files_of(style_masks)),
        control_images=len(files_of(control_images)),
        composition=bool(files_of(composition)),
        negative_style=bool(files_of(negative_style)),
    )
    # 2. The request against the schema, then against the server's rules (nothing decoded yet)
    req = parse_request(fields, style_images=n_uploads)
    await run_in_threadpool(service.check, req, style_images=n_uploads)
    # 3. The uploads decoded (bytes, then pixels), then read as the library will read them
    style_images = await read_uploads(images, service)
    uploads = Uploads(
        content=await read_upload(content, service, what="content image", field="content"),
        mask=await read_upload(mask, service, what="mask", mask=True, field="mask"),
        style_masks=await read_uploads(
            style_masks, service, what="style mask", mask=True, field="style_masks"
        ),
        control_images=await read_uploads(
            control_images,
            service,
            what="control image",
            max_count=MAX_CONTROL_IMAGES,
            field="control_images",
        ),
        composition=await read_upload(composition, service, what="composition image", field="composition"),
        negative_style=await read_upload(
            negative_style, service, what="negative style image", field="negative_style"
        ),
    )
    await run_in_threadpool(service.check_inputs, req, uploads)
    # 4. Queued: the job id at once, or (wait=true) the images when done
    job = service.submit_generate(req, style_images, uploads=uploads)
    limits = service.limits
    if wait and await wait_for_job(
        job, min(timeout or limits.max_wait_s, limits.max_wait_s), request, service
    ):
        return failed_job_response(job) if job.status in (FAILED, CANCELLED) else job_payload(service, job)
    return JSONResponse(
        job_payload(service, job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )
