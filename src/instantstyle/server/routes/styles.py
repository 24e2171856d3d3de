"""``/v1/styles``: saved styles (reference images encoded once, used as ``"@name"`` in requests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ...errors import InstantStyleError
from ...schema_flags import parse_numbers
from ..http_errors import error_docs, error_response
from ..service import GenerationService
from .common import ServiceDep, read_uploads

router = APIRouter()


@router.get("/styles", summary='Saved styles (use them as "@name" in style)')
async def get_styles(service: ServiceDep):
    return {"styles": await run_in_threadpool(_list_styles, service)}


@router.post(
    "/styles",
    status_code=201,
    summary="Encode uploaded images once and save them as a style",
    responses=error_docs(409),
)
async def post_style(
    service: ServiceDep,
    name: Annotated[str, Form(description="1-64 letters, digits, '_', '-', '.'")],
    images: Annotated[list[UploadFile], File(description="reference images")],
    weights: Annotated[str | None, Form(description="JSON list or comma-separated, one per image")] = None,
    overwrite: Annotated[bool, Form()] = False,
):
    from ...embeddings import combine_styles, save_style, style_path

    directory = service.model.styles.styles_directory
    path = style_path(name, directory)  # checks the name: no request leaves the styles directory
    if path.exists() and not overwrite:  # checked again, atomically, when it is written
        return error_response(409, f"style '{name}' already exists; send overwrite=true to replace it")
    w = parse_numbers(weights)
    pil = await read_uploads(images, service)
    if not pil:
        raise InstantStyleError("no image uploaded; send one or more files in 'images'")
    if w is not None and len(w) != len(pil):
        raise InstantStyleError(f"weights has {len(w)} values for {len(pil)} images")

    style = await run_in_threadpool(service.call, lambda model: model.encode_style(pil, w), kind="style")
    combine_styles(style.embeds, style.weights)  # validates the weights (>= 0, not all zero)
    await run_in_threadpool(save_style, style, name, directory, overwrite)
    return _style_entry(style)


@router.delete("/styles/{name}", status_code=204, summary="Delete a saved style", responses=error_docs(404))
async def delete_style_route(service: ServiceDep, name: str):
    from ...embeddings import style_path

    path = style_path(name, service.model.styles.styles_directory)
    try:
        path.unlink()  # one step: of two concurrent deletes, one gets 204 and the other 404
    except FileNotFoundError:
        return error_response(404, f"style '{name}' not found")
    return Response(status_code=204)


def _style_entry(style) -> dict:
    return {
        "name": style.name,
        "images": len(style.weights),
        "weights": style.weights,
        "encoder_id": style.encoder_id,
        "created": style.created,
    }


def _list_styles(service: GenerationService) -> list[dict]:
    """The saved styles; one deleted while listing is left out, a damaged one says so (no server path)."""
    from ...embeddings import list_styles, load_style, style_path

    directory = service.model.styles.styles_directory
    out = []
    for name in list_styles(directory):
        try:
            out.append(_style_entry(load_style(name, directory)))
        except InstantStyleError:
            if style_path(name, directory).is_file():
                out.append({"name": name, "error": "the style file is damaged; save the style again"})
    return out
