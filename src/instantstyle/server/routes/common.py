"""What the routes share: the service and policy as dependencies, and reading uploaded files."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from ...errors import InstantStyleError
from ..policy import Policy
from ..service import GenerationService
from ..uploads import UploadTooLargeError, decode_upload


def get_service(request: Request) -> GenerationService:
    return request.app.state.service


def get_policy(request: Request) -> Policy:
    return request.app.state.policy


ServiceDep = Annotated[GenerationService, Depends(get_service)]
PolicyDep = Annotated[Policy, Depends(get_policy)]


def files_of(files) -> list[UploadFile]:
    """A multipart file field (absent, one file or several) as a list."""
    if files is None:
        return []
    return [f for f in (files if isinstance(files, list) else [files]) if f is not None]


async def read_uploads(
    files,
    service: GenerationService,
    *,
    what: str = "style image",
    mask: bool = False,
    max_count: int | None = None,
    field: str = "images",
) -> list:
    """Uploaded files -> decoded PIL images: count, then bytes (read at most limit+1), then pixels."""
    files = files_of(files)
    limits = service.limits
    max_count = limits.max_style_images if max_count is None else max_count
    if len(files) > max_count:
        raise InstantStyleError(
            f"{len(files)} files uploaded as '{field}', over the limit of {max_count}; "
            "send fewer" + (" (server flag --max-style-images)" if field in ("images", "style_masks") else "")
        )
    images = []
    for i, f in enumerate(files):
        name = f.filename or f"upload {i}"
        if f.size is not None and f.size > limits.max_upload_bytes:
            raise UploadTooLargeError(
                f"{what} {name!r} is {f.size} bytes, over the limit of "
                f"{limits.max_upload_bytes} bytes; send a smaller file "
                "(server flag --max-upload-bytes)"
            )
        data = await f.read(limits.max_upload_bytes + 1)
        images.append(await run_in_threadpool(decode_upload, data, name, limits, what=what, mask=mask))
    return images


async def read_upload(file, service: GenerationService, *, what: str, field: str, mask: bool = False):
    """One optional uploaded image, decoded (None when the field is absent)."""
    return next(iter(await read_uploads(file, service, what=what, mask=mask, field=field)), None)
