"""Stylize a content image: ControlNet, img2img, inpainting, regional styles and InstantStyle-Plus.

These are modes of the same ``InstantStyle`` object and weights. Each mode builds one of diffusers'
stock SDXL pipelines with ``from_pipe(model.pipe, ...)`` (every component shared, nothing loaded
twice; derived pipelines are cached per model) and runs it through ``model.run`` (scoped
IP-Adapter scales and scheduler, metadata on every image):

1. ``controlnet``: ``StableDiffusionXLControlNetPipeline`` (one ControlNet or a ``MultiControlNetModel``);
2. ``img2img``: ``StableDiffusionXLImg2ImgPipeline`` (``StableDiffusionXLControlNetImg2ImgPipeline`` with --control);
3. ``inpaint``: ``StableDiffusionXLInpaintPipeline``; the style is injected everywhere, as the
   InstantStyle inpainting script (``inpaint_style="everywhere"``, the default), or only where the
   image is repainted (``inpaint_style="mask"``: an IP-Adapter attention mask equal to the
   inpainting mask);
4. regional styles (any task): several references, one token set each, each masked to its region
   through diffusers' IP-Adapter attention masks, per-image scales on the style block only;
5. ``plus`` (InstantStyle-Plus, arXiv 2407.00788; instantX-research/InstantStyle-Plus
   ``infer_style.py``): ReNoise inversion of the content image (plain DDIM selectable), then
   DDIM sampling from the inverted latent on the *same* timesteps, with the tile ControlNet on the
   content image (0.4), the loaded adapter on the content image at a low global scale (0.2) and on
   the style image in the style block only (1.2), guidance 5 and the authors' negative prompt.
   The authors load ``ip-adapter_sdxl_vit-h`` with the ViT-H encoder for both; we use whichever
   adapter the model loaded (``--adapter``/``--image-encoder``; the ViT-H pair is one command in
   docs/stylize.md), as a second adapter that shares every weight with the first
   (``shared_second_adapter``). The authors' optional CSD style guidance (off in their script)
   is not implemented.

Sizes: a content image of any aspect ratio is resized so its short side is the model's native
size and both sides are multiples of the model's size unit; the output is returned at the content
image's aspect ratio (resized from the generation size when rounding changed it). Plus sizes as
the authors' ``resize_img``: short side 1024, then the long side scaled to 1280, each side floored
to a multiple of 64 (scaled with the model's native size), and returns that size.

Masks (inpainting and regional) must be single-channel images (mode ``1``/``L``, or a grey
palette); a mask whose size differs from the content image is an error (never resized silently:
a mask drawn for another picture would repaint the wrong place).
"""

from __future__ import annotations

import contextlib
import io
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import control as control_mod
from ..config import GenerateRequest
from ..errors import InstantStyleError
from ..images import DEFAULT_MAX_PIXELS, image_hash, load_image
from ..pipeline import swap_scheduler

MASK_MODES = ("1", "L")

_PIPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # InstantStyle -> {key: derived pipeline}


@dataclass
class Inputs:
    """Decoded, checked images of one stylize request, at the generation size."""

    width: int
    height: int
    out_size: tuple[int, int]  # returned image size (the content's exact aspect ratio)
    content: Image.Image | None = None
    mask: Image.Image | None = None
    style_masks: list[Image.Image] = field(default_factory=list)
    control: list[Image.Image] = field(default_factory=list)
    hashes: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- sizes and images


def size_unit(pipe) -> int:
    """Pixels per latent cell times the UNet's total downsampling (32 for SDXL, 8 for the tiny model)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def fit_size(width: int, height: int, native: int, unit: int, limit: int = 4096) -> tuple[int, int, tuple[int, int]]:
    """Generation size (multiples of ``unit``, short side ``native``) and exact-aspect output size."""
    short, long_ = min(width, height), max(width, height)
    exact_long = round(native * long_ / short)
    gen_long = max(unit, round(native * long_ / short / unit) * unit)
    if gen_long > limit:
        raise InstantStyleError(
            f"content image {width}x{height} is too elongated: at short side {native} its long side would be "
            f"{gen_long} px (limit {limit}); crop it closer to 4:1"
        )
    if width <= height:
        return native, gen_long, (native, exact_long)
    return gen_long, native, (exact_long, native)


def plus_size(width: int, height: int, min_side: int = 1024, max_side: int = 1280,
              base: int = 64) -> tuple[int, int]:
    """InstantStyle-Plus's ``resize_img``: short side to ``min_side``, then long side to ``max_side``,
    each side floored to a multiple of ``base`` (16:9 -> 1280x704, 4:3 -> 1280x960, 1:1 -> 1280x1280)."""
    ratio = min_side / min(width, height)
    w, h = round(ratio * width), round(ratio * height)
    ratio = max_side / max(w, h)
    w, h = round(ratio * w), round(ratio * h)
    return max(base, w // base * base), max(base, h // base * base)


def load_mask(source, *, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A single-channel mask as mode ``L``; RGB/RGBA/LA masks are refused (one line)."""
    if isinstance(source, Image.Image):
        image = source
        label = what
    else:
        path = Path(source)
        label = f"{what} '{source}'"
        load_image(path, what=what, max_pixels=max_pixels)  # existence, size limit, corruption
        image = Image.open(io.BytesIO(path.read_bytes()))
        image.load()
    if image.mode == "P" and image.convert("RGB").convert("L").convert("RGB").tobytes() == image.convert("RGB").tobytes():
        image = image.convert("L")  # a palette of greys is one channel
    if image.mode not in MASK_MODES:
        bands = len(image.getbands())
        raise InstantStyleError(
            f"{label} has {bands} channels (mode {image.mode}); masks are single-channel (white = selected, "
            "black = not): save it as greyscale (mode L)"
        )
    return image.convert("L")


def _check_same_size(mask: Image.Image, content: Image.Image, label: str) -> None:
    if mask.size != content.size:
        raise InstantStyleError(
            f"{label} is {mask.width}x{mask.height} but the content image is {content.width}x{content.height}; "
            "masks must have the content image's size (resize the mask, it is not resized for you)"
        )


def precheck(req: GenerateRequest, base: str, max_pixels: int = DEFAULT_MAX_PIXELS, *, images: bool = True,
             controlnets: bool = True) -> None:
    """Every check that needs no weights, for the CLI to run before loading gigabytes.

    ``images``: content / mask / control images (existence, pixel limit, mask channels and size);
    ``controlnets``: each ControlNet's config against the base UNet's config (kilobytes).
    """
    if images:
        _precheck_images(req, max_pixels)
    if controlnets and req.control:
        from .. import models

        unet_config = models.load_unet_config(base)
        for entry in req.control:
            spec = control_mod.parse_control(entry, tiny=base == models.TINY)
            if spec.model != models.TINY:
                control_mod.check_compatible(control_mod.read_config(spec.model), unet_config, spec.model)


def _precheck_images(req: GenerateRequest, max_pixels: int) -> None:
    content = load_image(req.content, what="content image", max_pixels=max_pixels) if req.content else None
    masks = ([("mask", req.mask)] if req.mask else []) + [(f"style mask {i + 1}", m) for i, m in
                                                          enumerate(req.style_masks)]
    for label, path in masks:
        mask = load_mask(path, what=label, max_pixels=max_pixels)
        if content is not None:
            _check_same_size(mask, content, label)
    for path in req.control_image:
        if path is not None:
            load_image(path, what="control image", max_pixels=max_pixels)


def load_inputs(model, req: GenerateRequest, *, content_image=None, mask_image=None, style_masks=None,
                control_images=None) -> Inputs:
    """Read and check every image of the request (in-memory images override the request's paths)."""
    max_pixels = model.styles.max_pixels
    content = content_image if content_image is not None else req.content
    content = load_image(content, what="content image", max_pixels=max_pixels) if content is not None else None
    mask = mask_image if mask_image is not None else req.mask
    mask = load_mask(mask, what="mask", max_pixels=max_pixels) if mask is not None else None
    regional = list(style_masks) if style_masks is not None else list(req.style_masks)
    regional = [load_mask(m, what=f"style mask {i + 1}", max_pixels=max_pixels) for i, m in enumerate(regional)]
    given = list(control_images) if control_images is not None else list(req.control_image)
    given = [load_image(c, what="control image", max_pixels=max_pixels) if c is not None else None for c in given]
    if content is not None:
        if mask is not None:
            _check_same_size(mask, content, "mask")
        for i, m in enumerate(regional):
            _check_same_size(m, content, f"style mask {i + 1}")
    elif len({m.size for m in regional}) > 1:
        raise InstantStyleError("style masks have different sizes; draw them all on the same canvas")

    # Size: from the content image's aspect ratio unless the request fixes both sides.
    native, unit = model.native_size, size_unit(model.pipe)
    reference = content or next((g for g in given if g is not None), None)
    if req.width and req.height:
        width, height, out = req.width, req.height, (req.width, req.height)
    elif req.task == "plus" and content is not None:
        width, height = plus_size(*content.size, native, native * 5 // 4, 2 * unit)
        out = (width, height)
    elif reference is not None:
        width, height, out = fit_size(*reference.size, native, unit)
    else:
        width, height = req.width or native, req.height or native
        out = (width, height)
    if width % unit or height % unit:
        raise InstantStyleError(f"--width/--height {width}x{height}: must be multiples of {unit} for this model")

    hashes = {}
    if content is not None:
        hashes["content_sha256"] = image_hash(content)
        content = content.resize((width, height), Image.LANCZOS) if content.size != (width, height) else content
    if mask is not None:
        hashes["mask_sha256"] = image_hash(mask)
        mask = mask.resize((width, height), Image.NEAREST) if mask.size != (width, height) else mask
    if regional:
        hashes["style_mask_sha256"] = [image_hash(m) for m in regional]
    specs = [control_mod.parse_control(c, tiny=model.ids["base"] == "tiny") for c in req.control]
    controls = control_mod.control_images(specs, content, given, req.canny_low, req.canny_high)
    if given:
        hashes["control_image_sha256"] = [image_hash(g) if g is not None else None for g in given]
    controls = [c.resize((width, height), Image.LANCZOS) if c.size != (width, height) else c for c in controls]
    return Inputs(width, height, out, content, mask, regional, controls, hashes)


# ---------------------------------------------------------------------- derived pipelines


def derived_pipelines(model) -> list:
    """The pipelines built so far for ``model`` by ``derived_pipeline``."""
    return list(_PIPES.get(model, {}).values())


def derived_pipeline(model, cls_name: str, controlnets: Sequence = ()):
    """``diffusers.<cls_name>.from_pipe(model.pipe, controlnet=...)``, built once per model."""
    import diffusers

    key = (cls_name, tuple(id(c) for c in controlnets))
    cache = _PIPES.setdefault(model, {})
    if key not in cache:
        kwargs = {}
        if controlnets:
            kwargs["controlnet"] = (controlnets[0] if len(controlnets) == 1
                                    else diffusers.MultiControlNetModel(list(controlnets)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dtype is not optional: diffusers 0.42's from_pipe casts the new pipeline -- whose
            # modules are OUR shared modules -- to float32 unless told otherwise (seen on an H200:
            # 31 GiB peak and 4x slower steps for every later request).
            pipe = getattr(diffusers, cls_name).from_pipe(model.pipe, dtype=model.dtype, **kwargs)
        pipe.set_progress_bar_config(**getattr(model.pipe, "_progress_bar_config", {}))
        cache[key] = pipe
    return cache[key]


@contextlib.contextmanager
def shared_second_adapter(unet):
    """A second IP-Adapter that shares every weight of the first, for the duration of the block.

    Appends the first adapter's image projection and each processor's ``to_k_ip``/``to_v_ip``
    *modules* (the same objects, not copies) as adapter 2, so two images can go through one
    adapter at different scales: no memory beyond a few list entries, nothing loaded twice.
    Removed in ``finally``, so the model is left with exactly one adapter.
    """
    from ..adapter import ip_processors

    procs = ip_processors(unet)
    layers = unet.encoder_hid_proj.image_projection_layers
    if len(layers) != 1:
        raise InstantStyleError(f"InstantStyle-Plus needs exactly one attached IP-Adapter ({len(layers)} found)")
    layers.append(layers[0])
    for proc in procs.values():
        proc.to_k_ip.append(proc.to_k_ip[0])
        proc.to_v_ip.append(proc.to_v_ip[0])
        proc.num_tokens = [*proc.num_tokens, proc.num_tokens[0]]
        proc.scale = [*proc.scale, 0.0]
    try:
        yield
    finally:
        del layers[-1]
        for proc in procs.values():
            del proc.to_k_ip[-1]
            del proc.to_v_ip[-1]
            proc.num_tokens = proc.num_tokens[:-1]
            proc.scale = proc.scale[:-1]


# ---------------------------------------------------------------------- the modes


def stylize(model, request: GenerateRequest, *, style_images=None, content_image=None, mask_image=None,
            style_masks=None, control_images=None, on_step=None, composition_image=None,
            negative_style_image=None) -> list[Image.Image]:
    """Run ``request`` (any task) on ``model``; in-memory images override the request's paths."""
    req = request
    # 1. Images and sizes (every input checked before any model runs).
    inputs = load_inputs(model, req, content_image=content_image, mask_image=mask_image,
                         style_masks=style_masks, control_images=control_images)
    # 2. Style embeddings and block scales at the generation size (regional: one token set per image).
    regional = bool(inputs.style_masks)
    update = {"width": inputs.width, "height": inputs.height}
    if regional:
        update.update(style_combine="concat", style_weights=None)
    prep = model.prepare(req.model_copy(update=update), style_images, composition_image=composition_image,
                         negative_style_image=negative_style_image)
    prep.request = req.model_copy(update={"width": inputs.width, "height": inputs.height})
    prep.params.update(style_combine=req.style_combine, style_weights=req.style_weights)
    scale_maps = [dict(s) for s in prep.scales]
    cross_kwargs = None
    n_images = prep.ip_embeds[0].shape[1]
    if regional:
        if len(inputs.style_masks) != n_images:
            raise InstantStyleError(
                f"{len(inputs.style_masks)} style masks for {n_images} style images (a saved style counts each of "
                "its images); give one --style-mask per style image"
            )
        weights = req.style_weights or [1.0] * n_images
        masks = _ip_masks(inputs.style_masks, inputs.width, inputs.height)
    elif req.task == "inpaint" and req.inpaint_style == "mask":
        # The style is injected only where the image is repainted.
        weights = [1.0] * n_images
        masks = _ip_masks([inputs.mask] * n_images, inputs.width, inputs.height)
    if regional or (req.task == "inpaint" and req.inpaint_style == "mask"):
        # Slots carrying the style images (injection.py) take their masks and per-image weights;
        # a composition image is one unmasked image.
        styled = [kind != "composition" for kind in prep.slots]
        scale_maps = [{name: [s * w for w in weights] for name, s in m.items()} if keep else m
                      for m, keep in zip(scale_maps, styled, strict=True)]
        cross_kwargs = {"ip_adapter_masks": [masks if keep else None for keep in styled]}

    # 3. ControlNets.
    specs = [control_mod.parse_control(c, tiny=model.ids["base"] == "tiny") for c in req.control]
    controlnets = [control_mod.load_controlnet(model, s.model) for s in specs]
    scales = list(req.control_scale) or [s.default_scale for s in specs]
    scales = scales * len(specs) if len(scales) == 1 else scales
    extra: dict = {}
    if controlnets:
        extra["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    if cross_kwargs:
        extra["cross_attention_kwargs"] = cross_kwargs
    prep.params.update({
        "task": req.task, "width": inputs.width, "height": inputs.height,
        "output_size": list(inputs.out_size), "strength": req.effective_strength,
        "controlnets": [{"kind": s.kind, "model": s.model, "scale": sc} for s, sc in zip(specs, scales, strict=True)],
        **inputs.hashes,
    })
    if req.task == "plus":
        prep.params.update(content_ip_scale=req.effective_content_ip_scale, inversion_steps=req.steps,
                           inversion_prompt=req.inversion_prompt or req.prompt, inversion=req.effective_inversion,
                           **(_renoise_settings(req) if req.effective_inversion == "renoise" else {}))
    run_kwargs = dict(on_step=on_step, scale_maps=scale_maps, **extra)

    # 4. The mode.
    if req.task == "plus":
        images = _plus(model, prep, inputs, controlnets, run_kwargs)
    elif req.task == "controlnet":
        pipe = derived_pipeline(model, "StableDiffusionXLControlNetPipeline", controlnets)
        images = model.run(pipe, prep, image=_one_or_list(inputs.control), **run_kwargs)
    elif req.task == "img2img":
        if controlnets:
            pipe = derived_pipeline(model, "StableDiffusionXLControlNetImg2ImgPipeline", controlnets)
            run_kwargs["control_image"] = _one_or_list(inputs.control)
        else:
            pipe = derived_pipeline(model, "StableDiffusionXLImg2ImgPipeline")
        images = model.run(pipe, prep, image=inputs.content, strength=req.effective_strength, **run_kwargs)
    elif req.task == "inpaint":
        if controlnets:
            pipe = derived_pipeline(model, "StableDiffusionXLControlNetInpaintPipeline", controlnets)
            run_kwargs["control_image"] = _one_or_list(inputs.control)
        else:
            pipe = derived_pipeline(model, "StableDiffusionXLInpaintPipeline")
        images = model.run(pipe, prep, image=inputs.content, mask_image=inputs.mask,
                           strength=req.effective_strength, **run_kwargs)
    else:  # txt2img with regional styles
        images = model.run(model.pipe, prep, **run_kwargs)

    # 5. Back to the content image's exact aspect ratio.
    if inputs.out_size != (inputs.width, inputs.height):
        resized = []
        for im in images:
            out = im.resize(inputs.out_size, Image.LANCZOS)
            out.info.update(im.info)
            resized.append(out)
        images = resized
    return images


def _renoise_settings(req) -> dict:
    from ..config import DEFAULT_RENOISE_STEPS

    return {"renoise_steps": DEFAULT_RENOISE_STEPS if req.renoise_steps is None else req.renoise_steps,
            "noise_regularization": True if req.noise_regularization is None else req.noise_regularization}


def check_same_timesteps(inversion, scheduler, steps: int) -> None:
    """The forward sampler must retrace the inversion's timesteps exactly (one line otherwise)."""
    scheduler.set_timesteps(steps)
    forward = [int(t) for t in scheduler.timesteps]
    if forward != inversion.timesteps[::-1]:
        raise InstantStyleError(f"InstantStyle-Plus: the inversion ran on timesteps {inversion.timesteps[-1]}..."
                                f"{inversion.timesteps[0]} but the generation would run on {forward[0]}...{forward[-1]}; "
                                "use the same --steps for both")


def _plus(model, prep, inputs: Inputs, controlnets, run_kwargs) -> list[Image.Image]:
    """InstantStyle-Plus: invert the content, then denoise from it with tile ControlNet + two adapters."""
    from .. import embeddings
    from ..inversion import ddim_scheduler, invert

    req = prep.request
    # 5a. Inversion of the content image (adapters at 0, guidance 1 = the authors' 0, content prompt),
    #     on the timesteps the generation uses.
    method = req.effective_inversion
    inversion = invert(model.pipe, inputs.content, req.inversion_prompt or req.prompt, method=method,
                       steps=req.steps, guidance=1.0, negative_prompt=None, width=inputs.width,
                       height=inputs.height, seed=prep.seed,
                       progress=not getattr(model.pipe, "_progress_bar_config", {}).get("disable", False),
                       **(_renoise_settings(req) if method == "renoise" else {}))
    scheduler = ddim_scheduler(model.pipe)
    check_same_timesteps(inversion, ddim_scheduler(model.pipe), req.steps)
    # 5b. Adapter 2 = the same adapter on the content image, global low scale, every block.
    content_embed = model.encode_style([inputs.content]).embeds  # [1, D]
    prep.ip_embeds = [prep.ip_embeds[0],
                      embeddings.with_unconditional(content_embed, req.guidance > 1.0).to(model.device, model.dtype)]
    all_procs = {name: req.effective_content_ip_scale for name in _ip_processor_names(model.pipe.unet)}
    run_kwargs["scale_maps"] = [run_kwargs["scale_maps"][0], all_procs]
    if "cross_attention_kwargs" in run_kwargs:  # regional style masks: the content adapter is unmasked
        run_kwargs["cross_attention_kwargs"]["ip_adapter_masks"].append(None)
    pipe = derived_pipeline(model, "StableDiffusionXLControlNetPipeline", controlnets)
    with shared_second_adapter(model.pipe.unet), swap_scheduler(pipe, scheduler):
        latents = inversion.noisy.repeat(req.num_images, 1, 1, 1)
        return model.run(pipe, prep, image=_one_or_list(inputs.control), latents=latents, **run_kwargs)


def _ip_processor_names(unet) -> list[str]:
    from ..adapter import ip_processors

    return list(ip_processors(unet))


def _ip_masks(masks: list[Image.Image], width: int, height: int) -> torch.Tensor:
    """Masks -> ``[1, N, H, W]`` in [0, 1] as diffusers' IP-Adapter attention expects."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    m = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)  # [N, 1, H, W]
    return m.reshape(1, m.shape[0], m.shape[2], m.shape[3])


def _one_or_list(images: list):
    return images[0] if len(images) == 1 else images


def needs_stylize(req: GenerateRequest) -> bool:
    """Whether ``InstantStyle.generate`` should route ``req`` here (anything beyond plain txt2img)."""
    return req.task not in (None, "txt2img") or bool(req.style_masks)
