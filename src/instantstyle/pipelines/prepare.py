"""Steps 1-4 of every InstantStyle generation: everything but the denoising loop.

1. Blocks: the request's preset or ``--blocks`` resolved against the UNet (a misspelt name fails
   here, before any model runs). 2. Size and seed. 3. The style embedding in CLIP space: encoded
   (cached), combined, content subtracted (InstantStyle, arXiv 2404.02733, Sec. 3.2). 4. The
   precomputed ``ip_adapter_image_embeds`` for diffusers, one slot per branch / extra image
   (``injection.py``), and the parameters every output records.

With an IP-Adapter Plus the features are the encoder's patch features ``[L, H]`` instead of its
global embedding ``[D]`` (``embeddings.FEATURES``), the unconditional half is the all-zero image's
features (as diffusers), and content subtraction is refused in step 1 (``embeddings.PATCH_SUBTRACTION``,
from ``InstantStyle.resolve_branches``, which every front end runs before anything else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .. import blocks, embeddings, prompts, seeds, sizes
from ..config import GenerateRequest

if TYPE_CHECKING:
    from ..model import InstantStyle, StyleRef


@dataclass
class Prepared:
    """Everything a diffusers pipeline call needs, resolved from a request."""

    request: GenerateRequest
    seed: int
    width: int
    height: int
    ip_embeds: list[torch.Tensor]  # one per slot, [2 or 1, M, D] (global) or [2 or 1, M, L, H] (patch)
    scales: list[dict[str, float]]  # one per slot: attn2 processor -> scale
    params: dict = field(default_factory=dict)  # recorded in every output
    # What each ip_embeds/scales entry is (injection.SLOT_KINDS); entries past the loaded adapters
    # run as slots sharing its weights (injection.shared_slots).
    slots: list[str] = field(default_factory=lambda: ["style"])

    def generator(self) -> torch.Generator | list[torch.Generator]:
        """One CPU generator per image, seeded ``seed + i`` (``seeds.generators``)."""
        return seeds.generators(self.seed, self.request.num_images)


def prepare(
    model: InstantStyle,
    req: GenerateRequest,
    style_images: Sequence[StyleRef] | None = None,
    *,
    composition_image: Image.Image | None = None,
    negative_style_image: Image.Image | None = None,
) -> Prepared:
    """Steps 1-4 of a generation (see the module docstring).

    ``composition_image``/``negative_style_image`` are in-memory images used instead of the
    files ``req.composition``/``req.negative_style`` name (those then only label them).
    """
    # 1. Blocks: a misspelt name fails here, before any model runs; so does content subtraction
    #    with a patch-feature adapter (``resolve_branches``; the server runs it before queueing).
    branches = model.resolve_branches(req)
    scales = branches["cond"]
    # 2. Size and seed.
    width, height = req.width or model.native_size, req.height or model.native_size
    sizes.check_size(width, height, model.size_unit)
    seed = seeds.pick_seed(req.seed)
    prompts.warn_if_truncated(
        model.pipe.tokenizer,
        {"prompt": req.prompt, "negative prompt": req.negative_prompt, "content prompt": req.content_prompt},
    )
    # 3. Style embedding in CLIP space: encode (cached), combine, subtract content.
    refs = list(style_images or []) + list(req.style)
    style = model.encode_style(refs, req.style_weights)
    cond = embeddings.combine_styles(style.embeds, style.weights, req.style_combine)  # [M, *F]
    if req.content_prompt:
        cond = embeddings.subtract_content(
            cond, model.content_embedding(req.content_prompt), req.effective_content_scale
        )
    # 4. Precomputed embeds for diffusers: unconditional = zeros (global features), the all-zero
    #    image's features (patch) or the negative image, batch 1 (diffusers repeats it); one slot
    #    per branch / extra image (see injection.py).
    do_cfg = req.guidance > 1.0
    uncond, extra_hashes = model.styles.unconditional(), {}
    if req.negative_style:
        negative = model.encode_style(
            [negative_style_image if negative_style_image is not None else req.negative_style]
        )
        uncond = embeddings.negative_embedding(negative.embeds, req.effective_negative_style_scale, uncond)
        extra_hashes["negative_style_sha256"] = negative.image_hashes
    slots = [("style", embeddings.with_unconditional(cond, do_cfg, uncond), scales)]
    for branch in ("uncond", "both"):
        if branch in branches:  # the reference in the unconditional half (and the conditional, for both)
            slots.append((branch, embeddings.with_unconditional(cond, True, cond), branches[branch]))
    if req.composition:
        comp = model.encode_style([composition_image if composition_image is not None else req.composition])
        comp_cond = embeddings.combine_styles(comp.embeds, comp.weights, "mean")
        slots.append(
            (
                "composition",
                embeddings.with_unconditional(comp_cond, do_cfg, uncond),
                model.composition_scales(req),
            )
        )
        extra_hashes["composition_sha256"] = comp.image_hashes
    ip_embeds = [e.to(model.device, model.dtype) for _, e, _ in slots]
    in_memory = {
        "style": len(style_images or []),
        "composition": composition_image is not None,
        "negative_style": negative_style_image is not None,
    }
    params = _params(model, req, seed, width, height, slots, style, extra_hashes, in_memory)
    return Prepared(
        req, seed, width, height, ip_embeds, [s for _, _, s in slots], params, slots=[k for k, _, _ in slots]
    )


def _params(
    model: InstantStyle,
    req: GenerateRequest,
    seed: int,
    width: int,
    height: int,
    slots: list,
    style: embeddings.Style,
    extra_hashes: dict,
    in_memory: dict,
) -> dict:
    """The parameters every output of this generation records (``provenance.output_params``)."""
    params = model.output_params(
        req,
        seed=seed,
        width=width,
        height=height,
        content_scale=req.effective_content_scale if req.content_prompt else None,
        active_blocks=blocks.active_modules(model.modules, slots[0][2]),
        **{f"active_blocks_{kind}": blocks.active_modules(model.modules, s) for kind, _, s in slots[1:]},
        style_image_sha256=style.image_hashes,
        **extra_hashes,
    )
    # In-memory images are recorded by their hash (a label such as '<upload>' says nothing).
    params["style"] = [str(s) for s in req.style] + [
        f"<image {h[:12]}>" for h in style.image_hashes[: in_memory["style"]]
    ]
    for name in ("composition", "negative_style"):
        if getattr(req, name) and name + "_sha256" in extra_hashes and in_memory[name]:
            params[name] = f"<image {extra_hashes[name + '_sha256'][0][:12]}>"
    return params
