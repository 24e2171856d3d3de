"""StyleAligned (Hertz et al., arXiv 2312.02133): shared self-attention with a real reference.

- Sec. 3, "Shared attention layers" (Eq. 3-4): in the configured self-attention layers (default:
  all of them, as the paper), every target's queries and keys are AdaIN-normalised to the
  reference's per-channel statistics over tokens, and the reference's keys and values are
  appended to each target's own (``attention.shared_attention``). ``shared_score_shift`` adds a
  constant to the reference tokens' logits (the official real-image notebook uses log 2).
- Optional shared GroupNorm (the official code's ``share_group_norm``): each target's GroupNorm
  statistics are computed over its own features concatenated with the reference's. Sharing
  LayerNorm is not offered: it normalises each token alone, so sharing it changes nothing.
- Sec. 4.4, "Style alignment with a real reference image": the image is DDIM-inverted
  (``instantstyle.inversion``), conditioned on a user-given description of it
  (``reference_prompt``), with CFG 2 as the official ``inversion.py``; during sampling the
  reference row of the batch is overwritten after every step by the inverted latent of the next
  step, so it retraces the reference while the targets attend to it.

Sampling uses DDIM (the inverse of the inversion). The IP-Adapter stays off (all scales 0).
Differences from the official code: no ``offset`` (the reference row follows the trajectory from
its noisiest latent), and the style words are not appended to the target prompts (write them).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from .. import blocks
from ..inversion import ddim_invert, ddim_scheduler
from . import _common
from .attention import reference_rows, shared_attention
from .processors import PatchState, SelfAttentionPatch

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

    with _common.scoped_forward(norms, make):
        yield


def run(model, req, *, style_images=None, on_step=None):
    pipe, unet = model.pipe, model.pipe.unet
    # 1. Inputs: size, seed, the reference image and the layers (all fail before any model runs).
    st = _common.setup(model, req)
    ref = _common.reference_image(model, req, style_images)
    patched = layers(model, req)

    # 2. Invert the reference with DDIM, conditioned on its description.
    inv = ddim_invert(pipe, ref, req.reference_prompt, steps=req.steps, guidance=INVERSION_GUIDANCE,
                      width=st.width, height=st.height,
                      progress=not getattr(pipe, "_progress_bar_config", {}).get("disable", False))

    # 3. The batch: [reference, target x N]; targets start from the seed's noise.
    n, do_cfg = req.num_images, req.guidance > 1.0
    pe, npe, pooled, npooled = _common.encode_batch(pipe, [req.reference_prompt] + [req.prompt] * n,
                                                    req.negative_prompt, do_cfg)
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((n, *inv.noisy.shape[1:]), generator=st.generator(), device=model.device,
                         dtype=model.dtype)
    latents = torch.cat([inv.noisy.to(noise), noise])

    def follow_inversion(i: int, lat: torch.Tensor) -> torch.Tensor:
        lat[:1] = inv.at_forward_step(i + 1).to(lat)  # the reference retraces its inversion
        return lat

    # 4. Shared attention (and GroupNorm) in the configured layers, DDIM, IP-Adapter off; restored after.
    state = PatchState(group=1 + n)
    attn = partial(shared_attention, score_shift=req.shared_score_shift)
    processors = {name: SelfAttentionPatch(attn, state) for name in patched}
    extra = [shared_group_norm(unet, state)] if req.share_group_norm else []
    images = _common.sample_reference_batch(
        model, req, st, scheduler=ddim_scheduler(pipe), processors=processors, embeds=(pe, npe, pooled, npooled),
        latents=latents, update=follow_inversion, on_step=on_step, extra_patches=extra)

    # 5. Drop the reference row; record what ran.
    extra = {"scheduler": "ddim", "inversion_guidance": INVERSION_GUIDANCE, "patched_layers": len(patched),
             "attention_layers": req.attention_layers or ",".join(blocks.STYLE_ALIGNED_LAYERS)}
    return _common.finish(model, req, images[1:], st, reference=ref, extra=extra)
