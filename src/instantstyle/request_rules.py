"""The cross-field rules of ``GenerateRequest`` (its validators call them): the defaults a task or
a method brings, which inputs go together, which task or preset reads which field. Each raises ``ValueError`` naming the flags;
pydantic turns it into one line for every front end (CLI, Python, UI, HTTP).
"""

from __future__ import annotations

import math

from . import blocks

# Modes whose style reaches the layout block's conditional branch: a --composition image, which
# takes that block, cannot be combined with them.
LAYOUT_MODES = ("layout", "style+layout", "full", "composition")
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 0.99}
# InstantStyle-Plus defaults (its reference pipeline, infer_style.py): style-only adapter at 1.2,
# 50 DDIM steps, tile ControlNet at 0.4 on the content image, content adapter at 0.2 everywhere,
# guidance 5, the authors' negative prompt, ReNoise inversion with one renoise step.
PLUS_NEGATIVE_PROMPT = "lowres, low quality, worst quality, deformed, noisy, blurry"
PLUS_DEFAULTS = {
    "scale": 1.2,
    "steps": 50,
    "scheduler": "ddim",
    "control": ["tile"],
    "negative_prompt": PLUS_NEGATIVE_PROMPT,
}
# Guidance of the baselines when the request gives none: StyleAligned's real-image notebook (10),
# Visual Style Prompting's scripts (7). Everything else: the field's default.
METHOD_DEFAULTS = {"style-aligned": {"guidance": 10.0}, "visual-style-prompting": {"guidance": 7.0}}
DEFAULT_GUIDANCE = 5.0


def method_defaults(method: str | None) -> dict:
    """Defaults a method brings when the request leaves the field out (its authors' settings)."""
    return METHOD_DEFAULTS.get(method or "instantstyle", {})


def task_defaults(task: str | None) -> dict:
    """Defaults a task brings when the request leaves the field out (front ends show them)."""
    if task == "plus":
        return dict(PLUS_DEFAULTS)
    return {"control": ["canny"]} if task == "controlnet" else {}


def check_stylize(req, n_refs: int) -> None:
    """Tasks and their inputs: what each task needs, and inputs no task of the request reads."""
    task = req.task
    if task in ("img2img", "inpaint", "plus") and not req.content:
        raise ValueError(f"task {task} needs a content image (--content IMAGE)")
    if task == "inpaint" and not req.mask:
        raise ValueError("task inpaint needs --mask MASK (white = repaint)")
    if req.mask and task != "inpaint":
        raise ValueError(f"--mask is for inpainting, not task {task}")
    if req.strength is not None and task not in ("img2img", "inpaint"):
        raise ValueError(f"--strength is for img2img and inpainting, not task {task}")
    if task in DEFAULT_STRENGTH and int(req.steps * req.effective_strength) < 1:
        # diffusers runs int(steps * strength) of the steps; with none it fails deep inside the pipeline
        strength = req.effective_strength
        raise ValueError(
            f"--strength {strength:g} x --steps {req.steps} leaves no denoising step "
            f"(diffusers runs int(steps x strength) = 0); use --steps "
            f"{math.ceil(1 / strength - 1e-9)} or more, or a larger --strength"
        )
    if task == "txt2img" and req.content:
        raise ValueError("task txt2img does not use --content")
    if req.control and task == "txt2img":
        raise ValueError("--control needs task controlnet, img2img, inpaint or plus")
    if task == "controlnet" and not req.control:
        raise ValueError("task controlnet needs --control")
    if req.control_image and len(req.control_image) != len(req.control):
        raise ValueError(f"{len(req.control_image)} control images for {len(req.control)} --control entries")
    if len(req.control_scale) not in (0, 1, len(req.control)):
        raise ValueError(
            f"{len(req.control_scale)} control scales for {len(req.control)} --control entries; "
            "give one for all or one each"
        )
    if req.canny_low >= req.canny_high:
        raise ValueError(f"canny_low {req.canny_low} must be below canny_high {req.canny_high}")
    if req.style_masks and n_refs and len(req.style_masks) != n_refs:
        raise ValueError(
            f"{len(req.style_masks)} style masks for {n_refs} style references; "
            "give one --style-mask per --style"
        )
    plus_only = {
        "content_ip_scale": req.content_ip_scale,
        "inversion_steps": req.inversion_steps,
        "inversion_prompt": req.inversion_prompt,
        "inversion": req.inversion,
        "renoise_steps": req.renoise_steps,
        "noise_regularization": req.noise_regularization,
    }
    for name, value in plus_only.items():
        if value is not None and task != "plus":
            raise ValueError(f"{name} is for task plus (InstantStyle-Plus), not task {task}")
    if req.inpaint_style != "everywhere" and task != "inpaint":
        raise ValueError(f"inpaint_style is for task inpaint, not task {task}")
    if task == "plus" and req.inversion_steps is not None and req.inversion_steps != req.steps:
        raise ValueError(
            f"inversion_steps {req.inversion_steps} differs from steps {req.steps}: the generation "
            "must retrace the inversion's timesteps; drop inversion_steps (it follows steps)"
        )
    if req.inversion == "ddim" and (req.renoise_steps is not None or req.noise_regularization is not None):
        raise ValueError("renoise_steps / noise_regularization are for inversion renoise, not ddim")
    if task == "plus" and req.scheduler != "ddim":
        raise ValueError(
            f"task plus samples with DDIM (it undoes the DDIM inversion); drop --scheduler {req.scheduler}"
        )


def check_controls(req) -> None:
    """Precise mode, composition and negative images, the step window: combinations that mean something."""
    spec_names = (
        [n.partition("=")[0].strip() for n in (req.blocks or "").split(",")] if req.blocks else [req.mode]
    )
    spec = [(n, 1.0) for n in spec_names if n]
    if req.layout_boost is not None and not blocks.has_boost(spec):
        where = f"--blocks {req.blocks}" if req.blocks else f"--mode {req.mode}"
        raise ValueError(
            f"--layout-boost is for presets with a negative-branch layout block (--mode precise); "
            f"{where} has none"
        )
    cfg = req.guidance > 1.0
    if req.task == "plus" and blocks.branches_of(spec) != {"cond"}:
        raise ValueError(
            "--mode precise is not for task plus (its second adapter carries the content image); "
            "use --mode style"
        )
    if not cfg and "uncond" in blocks.branches_of(spec):
        raise ValueError(
            f"--mode precise works through the unconditional branch of classifier-free guidance; "
            f"--guidance {req.guidance:g} turns it off: use --guidance > 1"
        )
    if req.composition_scale is not None and not req.composition:
        raise ValueError("composition_scale needs a composition image (--composition IMAGE)")
    if req.negative_style_scale is not None and not req.negative_style:
        raise ValueError("negative_style_scale needs a negative style image (--negative-style IMAGE)")
    if req.negative_style and not cfg:
        raise ValueError(
            f"--negative-style replaces the unconditional branch of classifier-free guidance; "
            f"--guidance {req.guidance:g} turns it off: use --guidance > 1"
        )
    if req.composition:
        if req.task == "plus":
            raise ValueError(
                "--composition is not for task plus: there the content image gives the composition"
            )
        if not req.blocks and req.mode in LAYOUT_MODES:
            raise ValueError(
                f"--composition puts its image into the layout block, and --mode {req.mode} puts "
                "the style there too; use --mode style, strong or precise"
            )
