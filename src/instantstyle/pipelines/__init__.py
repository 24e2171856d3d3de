"""The tasks InstantStyle runs, one numbered module each, registered by name (as ``methods.METHODS``).

Every task drives one of diffusers' stock pipelines of the base's family (``PIPELINES``: SDXL or
SD1.5, ``pipeline_for``) on the loaded model's shared components
(``InstantStyle.derived_pipeline``: ``from_pipe``, nothing loaded twice) and the same two steps
(``prepare``: blocks, size, seed, style embeddings, parameters; ``denoise``: the loop with scoped
scales, scheduler and fast path). A task module has

    run(model, req, *, style_images=None, on_step=None, **images) -> list[PIL.Image]

where ``images`` are in-memory inputs used instead of the files the request names
(``content_image``, ``mask_image``, ``style_mask_images``, ``control_images``,
``composition_image``, ``negative_style_image``). The tasks that start from a content image share
``base.stylize`` (inputs at the generation size, regional styles, ControlNets, output size).

This module imports no torch: the request schema and the front ends may consult it freely.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..blocks import FAMILY_LABELS


@dataclass(frozen=True)
class Task:
    name: str  # GenerateRequest.task
    module: str  # submodule of instantstyle.pipelines with ``run``
    summary: str
    pipelines: tuple[str, ...]  # the diffusers SDXL pipelines it drives (the second: with --control)
    families: tuple[str, ...] = ("sdxl", "sd15")  # the base families it runs on (blocks.family)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "txt2img",
            "t1_text_to_image",
            "text to image in the style of the references",
            ("StableDiffusionXLPipeline",),
        ),
        Task(
            "controlnet",
            "t2_controlnet",
            "text to image following one or several ControlNets",
            ("StableDiffusionXLControlNetPipeline",),
        ),
        Task(
            "img2img",
            "t3_img2img",
            "the content image re-drawn in the style, at --strength",
            ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLControlNetImg2ImgPipeline"),
        ),
        Task(
            "inpaint",
            "t4_inpaint",
            "the masked part of the content image repainted in the style",
            ("StableDiffusionXLInpaintPipeline", "StableDiffusionXLControlNetInpaintPipeline"),
        ),
        Task(
            "plus",
            "t6_plus",
            "InstantStyle-Plus: the content image inverted, then re-drawn in the style",
            ("StableDiffusionXLControlNetPipeline",),
            ("sdxl",),  # its authors' pipeline and defaults (tile ControlNet, content adapter) are SDXL's
        ),
    )
}
# t5_regional is no task of its own: regional styles (one mask per style image) apply to any task.

# The stock diffusers pipeline of each kind, per family (every one supports ip_adapter_image_embeds).
PIPELINES: dict[str, dict[str, str]] = {
    "sdxl": {
        "txt2img": "StableDiffusionXLPipeline",
        "controlnet": "StableDiffusionXLControlNetPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "controlnet-img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "controlnet-inpaint": "StableDiffusionXLControlNetInpaintPipeline",
    },
    "sd15": {
        "txt2img": "StableDiffusionPipeline",
        "controlnet": "StableDiffusionControlNetPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "controlnet-img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet-inpaint": "StableDiffusionControlNetInpaintPipeline",
    },
}


def pipeline_for(family: str, kind: str) -> str:
    """The diffusers pipeline class name of ``kind`` (``PIPELINES`` keys) for a base family."""
    return PIPELINES[family][kind]


def task_of(req) -> Task:
    """The registered task of ``req`` (``txt2img`` when the request names none)."""
    return TASKS[req.task or "txt2img"]


def needs_stylize(req) -> bool:
    """Whether ``req`` is anything beyond plain text-to-image (content image, ControlNet, regional styles)."""
    return req.task not in (None, "txt2img") or bool(req.style_masks)


def run_task(
    model,
    req,
    *,
    style_images: Sequence | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **images,
) -> list:
    """Generate ``req`` with its task's module; images carry their parameters."""
    task = task_of(req)
    family = getattr(model, "family", "sdxl")
    if family not in task.families:
        from ..errors import InstantStyleError

        raise InstantStyleError(
            f"task {task.name} ({task.summary}) is implemented for "
            f"{' and '.join(FAMILY_LABELS[f] for f in task.families)} bases only, and this base is "
            f"{FAMILY_LABELS[family]}; use --task img2img or controlnet for a content image"
        )
    module = importlib.import_module(f".{task.module}", __name__)
    return module.run(model, req, style_images=style_images, on_step=on_step, **images)
