"""StyleAligned (Hertz et al., arXiv 2312.02133): shared self-attention with a real reference.

Sources: the paper (Sec. 3, 4.4) and the authors' code (google/style-aligned, Apache-2.0):
``sa_handler.py``, ``inversion.py`` and the real-image notebook ``style_aligned_transfer_sdxl.ipynb``,
whose settings are our defaults:

- Sec. 3, "Shared attention layers" (Eq. 3-4): in the configured self-attention layers (default:
  all of them, the handler's ``only_self_level=0``), every target's queries and keys are
  AdaIN-normalised to the reference's per-channel statistics over tokens, and the reference's keys
  and values are appended to each target's own (``processors.maths.shared_attention``).
  ``shared_score_shift`` adds a constant to the reference tokens' logits: default log 2 (the
  notebook's ``shared_score_shift = np.log(2)``; ``shared_score_scale`` stays 1, not offered).
- Shared normalisation (the notebook's ``share_group_norm=True, share_layer_norm=True``): every
  GroupNorm's statistics are computed over each image's own features concatenated with the
  reference's (``share_group_norm``, default on). The authors' LayerNorm sharing concatenates
  tokens, and LayerNorm normalises each token alone, so it is the identity: on by construction.
- Sec. 4.4 / ``inversion.py``: the reference is DDIM-inverted with CFG 2, conditioned on a
  description of it (``reference_prompt``). During sampling the reference row starts
  ``inversion_offset`` steps ahead on the inverted trajectory (the notebook's
  ``make_inversion_callback(zts, offset=5)`` for 50 steps; default: 5 per 50 steps, rounded) and
  after step ``i`` is overwritten with the inverted latent of step ``max(offset + 1, i + 1)``.
- The style words are appended to every target prompt (``f"{prompt}, {style}."``):
  ``style_description``, by default the reference prompt's text after its last comma (the
  notebook's ``"Man laying in a bed, medieval painting."`` gives ``medieval painting``).
- Guidance 10 (the notebook) when the request gives none; DDIM sampling (the inverse of the
  inversion), the request's step count (the notebook: 50). The IP-Adapter stays off.

The generated-reference demo (``style_aligned_sdxl.ipynb``) is reachable with
``share_group_norm=False, shared_score_shift=0, inversion_offset=0, guidance=5``. Differences:
the inversion reuses our DDIM schedule (``set_alpha_to_one=True``; the notebook's scheduler has
False), and a generated reference (in the same batch) is not offered.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from .. import blocks
from ..inversion import ddim_invert, ddim_scheduler
from ..processors.maths import reference_rows, shared_attention
from ..processors.scoped import scoped_forward
from ..processors.self_attention import PatchState, SelfAttentionPatch
from . import _common

INVERSION_GUIDANCE = 2.0  # official style_aligned_transfer_sdxl.ipynb / inversion.py


def layers(model, req) -> list[str]:
    """The ``attn1`` modules this request patches."""
    names = req.attention_layers.split(",") if req.attention_layers else blocks.STYLE_ALIGNED_LAYERS
    return blocks.self_attention_layers(model.modules, names)


@contextlib.contextmanager
def shared_group_norm(unet, state: PatchState):
    """Every GroupNorm of ``unet`` normalises ``[own | reference]`` features (4-D inputs), scoped."""
    norms = {n: m for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}

    def make(_module, original):
        def forward(x):
            if x.ndim != 4:
                return original(x)
            both = torch.cat([x, reference_rows(x, state.group)], dim=-2)  # [N, C, 2H, W]
            return original(both)[..., : x.shape[-2], :]

        return forward

    with scoped_forward(norms, make):
        yield


OFFSET_PER_50_STEPS = 5  # the real-image notebook's offset at 50 steps


def default_offset(steps: int) -> int:
    """The authors' inversion offset (5 at 50 steps), scaled with the step count."""
    return min(steps - 1, round(OFFSET_PER_50_STEPS * steps / 50))


def style_words(req) -> str:
    """What is appended to the target prompts: ``style_description``, else the reference prompt's last clause."""
    if req.style_description is not None:
        return req.style_description.strip().rstrip(".")
    head, comma, tail = (req.reference_prompt or "").rpartition(",")
    return tail.strip().rstrip(".") if comma and head.strip() else ""


def target_prompt(req) -> str:
    words = style_words(req)
    return f"{req.prompt}, {words}." if words else req.prompt


def run(model, req, *, style_images=None, on_step=None):
    pipe, unet = model.pipe, model.pipe.unet
    # 1. Inputs: size, seed, the reference image and the layers (all fail before any model runs).
    st = _common.setup(model, req)
    ref = _common.reference_image(model, req, style_images)
    patched = layers(model, req)
    offset = default_offset(req.steps) if req.inversion_offset is None else req.inversion_offset
    if offset >= req.steps:
        from ..errors import InstantStyleError

        raise InstantStyleError(f"--inversion-offset {offset} must be below --steps {req.steps}")

    # 2. Invert the reference with DDIM, conditioned on its description.
    inv = ddim_invert(
        pipe,
        ref,
        req.reference_prompt,
        steps=req.steps,
        guidance=INVERSION_GUIDANCE,
        width=st.width,
        height=st.height,
        progress=not getattr(pipe, "_progress_bar_config", {}).get("disable", False),
    )

    # 3. The batch: [reference, target x N]; the reference starts ``offset`` steps ahead on its
    #    trajectory, the targets from the seed's noise with the style words appended.
    n, do_cfg = req.num_images, req.guidance > 1.0
    prompt = target_prompt(req)
    pe, npe, pooled, npooled = _common.encode_batch(
        pipe, [req.reference_prompt] + [prompt] * n, req.negative_prompt, do_cfg
    )
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(
        (n, *inv.noisy.shape[1:]), generator=st.generator(), device=model.device, dtype=model.dtype
    )
    latents = torch.cat([inv.at_forward_step(offset).to(noise), noise])

    def follow_inversion(i: int, lat: torch.Tensor) -> torch.Tensor:
        lat[:1] = inv.at_forward_step(max(offset + 1, i + 1)).to(lat)  # the reference retraces its inversion
        return lat

    # 4. Shared attention (and GroupNorm) in the configured layers, DDIM, IP-Adapter off; restored after.
    state = PatchState(group=1 + n)
    attn = partial(shared_attention, score_shift=req.shared_score_shift)
    processors = {name: SelfAttentionPatch(attn, state) for name in patched}
    extra = [shared_group_norm(unet, state)] if req.share_group_norm else []
    images = _common.sample_reference_batch(
        model,
        req,
        st,
        scheduler=ddim_scheduler(pipe),
        processors=processors,
        embeds=(pe, npe, pooled, npooled),
        latents=latents,
        update=follow_inversion,
        on_step=on_step,
        extra_patches=extra,
    )

    # 5. Drop the reference row; record what ran.
    extra = {
        "scheduler": "ddim",
        "inversion_guidance": INVERSION_GUIDANCE,
        "patched_layers": len(patched),
        "attention_layers": req.attention_layers or ",".join(blocks.STYLE_ALIGNED_LAYERS),
        "inversion_offset_used": offset,
        "prompt_used": prompt,
    }
    return _common.finish(model, req, images[1:], st, reference=ref, extra=extra)
