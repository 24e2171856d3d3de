"""IP-Adapter files (h94 key layout), compatibility checks, attachment and scoped scales.

Attachment goes through diffusers' public ``load_ip_adapter`` with an in-memory state dict, so
the processors are stock ``IPAdapterAttnProcessor2_0`` (diffusers 0.42). Per-call scales are set
inside ``scoped_scales`` and restored afterwards, even on error: one request never leaks into the
next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InstantStyleError


@dataclass(frozen=True)
class AdapterInfo:
    kind: str  # "basic" (ImageProjection, global embedding) -- the only kind content subtraction applies to
    clip_dim: int  # input width of the image projection (1280 for ip-adapter_sdxl / bigG)
    cross_dim: int  # UNet cross-attention width the tokens are made for (2048 for SDXL)
    tokens: int  # tokens per image (4)
    n_layers: int  # cross-attention processors it carries weights for


def load_state_dict(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read an IP-Adapter file into ``{"image_proj": ..., "ip_adapter": ...}``.

    ``.safetensors`` with flat ``image_proj.*`` / ``ip_adapter.*`` keys, or a ``.bin``/``.pt``
    pickle read with ``torch.load(weights_only=True)`` (never arbitrary code).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path), device="cpu")
        else:
            flat = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/pickle errors have no common base class
        raise InstantStyleError(
            f"IP-Adapter '{path}' could not be read ({type(exc).__name__}); is it a complete .safetensors or .bin file?"
        ) from None
    if not isinstance(flat, Mapping):
        raise InstantStyleError(f"IP-Adapter '{path}' does not hold a state dict")
    if "image_proj" in flat and "ip_adapter" in flat:
        return {"image_proj": dict(flat["image_proj"]), "ip_adapter": dict(flat["ip_adapter"])}
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix in out and rest:
            out[prefix][rest] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        raise InstantStyleError(
            f"IP-Adapter '{path}' has no 'image_proj.*' and 'ip_adapter.*' keys; it is not in the h94 IP-Adapter layout"
        )
    return out


def inspect(state_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> AdapterInfo:
    proj = state_dict["image_proj"]
    n_layers = len({k.split(".")[0] for k in state_dict["ip_adapter"]})
    if "proj.weight" in proj and "norm.weight" in proj:
        cross = proj["norm.weight"].shape[0]
        return AdapterInfo(
            "basic", proj["proj.weight"].shape[1], cross, proj["proj.weight"].shape[0] // cross, n_layers
        )
    kind = "plus" if "latents" in proj else "other"
    raise InstantStyleError(
        f"this IP-Adapter is a '{kind}' adapter (patch features); InstantStyle's content subtraction and "
        "our loader need a global-embedding adapter such as h94/IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors"
    )


def check_compatible(info: AdapterInfo, image_encoder, unet, n_cross_processors: int) -> None:
    """Refuse mismatched parts before any generation starts."""
    enc_dim = image_encoder.config.projection_dim
    if info.clip_dim != enc_dim:
        raise InstantStyleError(
            f"IP-Adapter expects {info.clip_dim}-d image embeddings but the image encoder gives {enc_dim}-d "
            "(the classic ViT-H vs ViT-bigG mix-up: *_vit-h adapters need h94/IP-Adapter/models/image_encoder, "
            "ip-adapter_sdxl needs h94/IP-Adapter/sdxl_models/image_encoder)"
        )
    if info.cross_dim != unet.config.cross_attention_dim:
        raise InstantStyleError(
            f"IP-Adapter makes {info.cross_dim}-d tokens but the UNet's cross-attention is "
            f"{unet.config.cross_attention_dim}-d; it was trained for another base model family"
        )
    if info.n_layers != n_cross_processors:
        raise InstantStyleError(
            f"IP-Adapter has weights for {info.n_layers} cross-attention layers but the UNet has "
            f"{n_cross_processors}; it was trained for another base model family"
        )


def attach(pipe, state_dicts: Sequence[Mapping], image_encoder, feature_extractor) -> None:
    """Install one or several adapters on ``pipe`` through diffusers' public loader."""
    import diffusers.loaders.ip_adapter as ip_mod

    pipe.register_modules(image_encoder=image_encoder, feature_extractor=feature_extractor)
    level = ip_mod.logger.level
    ip_mod.logger.setLevel("ERROR")  # it warns that no encoder folder was given: we registered ours
    try:
        pipe.load_ip_adapter(
            list(state_dicts),
            subfolder=[None] * len(state_dicts),
            weight_name=[None] * len(state_dicts),
            image_encoder_folder=None,
        )
    finally:
        ip_mod.logger.setLevel(level)
    # load_ip_adapter installs every processor at scale 1.0; the resting state is "off".
    for proc in ip_processors(pipe.unet).values():
        proc.scale = [0.0] * len(proc.scale)


def ip_processors(unet) -> dict[str, object]:
    """``{name: processor}`` for every IP-Adapter attention processor of ``unet``."""
    return {
        name: proc
        for name, proc in unet.attn_processors.items()
        if isinstance(getattr(proc, "scale", None), list) and hasattr(proc, "to_k_ip")
    }


@contextlib.contextmanager
def scoped_scales(unet, scales: Sequence[Mapping[str, float | list[float]]]):
    """Set each IP processor's per-adapter scale for the duration of the block, then restore.

    ``scales[i]`` maps processor names to adapter ``i``'s scale (a float, or a per-image list for
    masked multi-image use); processors it does not name get 0, so they skip the image branch
    entirely (diffusers skips an adapter whose scale is 0).
    """
    procs = ip_processors(unet)
    if not procs:
        raise InstantStyleError("no IP-Adapter is attached to this UNet")
    n_adapters = len(next(iter(procs.values())).scale)
    if len(scales) != n_adapters:
        raise InstantStyleError(f"{len(scales)} scale maps given for {n_adapters} loaded IP-Adapters")
    unknown = set().union(*(set(s) for s in scales)) - set(procs)
    if unknown:
        raise InstantStyleError(f"scale given for unknown processors: {sorted(unknown)[:3]}")
    saved = {name: list(proc.scale) for name, proc in procs.items()}
    try:
        for name, proc in procs.items():
            proc.scale = [s.get(name, 0.0) for s in scales]
        yield
    finally:
        for name, proc in procs.items():
            proc.scale = saved[name]
