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

KINDS = ("basic", "plus")


@dataclass(frozen=True)
class AdapterInfo:
    """What an IP-Adapter file is, read from its tensors' shapes (``inspect``).

    - ``basic``: ``ImageProjection`` over the encoder's projected global embedding ``[D]``
      (``ip-adapter_sdxl``: bigG, 1280-d; ``ip-adapter_sdxl_vit-h``: ViT-H, 1024-d), 4 tokens;
      the only kind content subtraction applies to (the embedding lives in the joint CLIP space).
    - ``plus``: the Resampler (diffusers' ``IPAdapterPlusImageProjection``) over the encoder's
      penultimate hidden states ``[L, H]`` (patch features; ``ip-adapter-plus_sdxl_vit-h``: ViT-H,
      H = 1280, 16 tokens).
    """

    kind: str  # one of KINDS
    clip_dim: int  # input width: the projection dim (basic) or the encoder's hidden size (plus)
    cross_dim: int  # UNet cross-attention width the tokens are made for (2048 for SDXL)
    tokens: int  # tokens per image (4 basic, 16 for ip-adapter-plus_sdxl_vit-h)
    n_layers: int  # cross-attention processors it carries weights for

    @property
    def patch_features(self) -> bool:
        """Whether it reads the encoder's patch features (hidden states) instead of its global embedding."""
        return self.kind == "plus"

    @property
    def features(self) -> str:
        """``embeddings.FEATURES`` name of what it reads: ``global`` or ``patch``."""
        return "patch" if self.patch_features else "global"


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


# Layouts diffusers' loader knows but this toolkit does not run: (a key that marks it, what it is).
OTHER_LAYOUTS = (
    ("perceiver_resampler.proj_in.weight", "an IP-Adapter FaceID Plus (face ID embeddings from insightface)"),
    ("proj.3.weight", "an IP-Adapter full-face adapter (ip-adapter-full-face: an MLP over patch features)"),
    ("proj.0.weight", "an IP-Adapter FaceID adapter (face ID embeddings from insightface)"),
)
SUPPORTED = (
    "use a global adapter (h94/IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors or "
    "ip-adapter_sdxl_vit-h.safetensors) or a Plus adapter (ip-adapter-plus_sdxl_vit-h.safetensors)"
)


def inspect(state_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> AdapterInfo:
    """The adapter's kind and widths from its tensors (the layouts of h94/IP-Adapter).

    Loading itself is diffusers' (``load_ip_adapter``); this only reads shapes so a wrong pairing
    fails in one line before any model loads.
    """
    proj = state_dict["image_proj"]
    n_layers = len({k.split(".")[0] for k in state_dict["ip_adapter"]})
    if "proj.weight" in proj and "norm.weight" in proj:
        cross = proj["norm.weight"].shape[0]
        return AdapterInfo(
            "basic", proj["proj.weight"].shape[1], cross, proj["proj.weight"].shape[0] // cross, n_layers
        )
    if all(k in proj for k in ("latents", "proj_in.weight", "proj_out.weight")):
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        to_q = proj.get("layers.0.0.to_q.weight")
        if depth != 4 or to_q is None or to_q.shape[0] % 64:
            raise InstantStyleError(
                f"this IP-Adapter Plus has a Resampler of {depth} layers"
                f"{'' if to_q is None else f' with {to_q.shape[0]}-wide attention'}; diffusers loads the "
                "h94 layout only (4 layers, 64-wide heads), as in ip-adapter-plus_sdxl_vit-h.safetensors"
            )
        return AdapterInfo(
            "plus",
            proj["proj_in.weight"].shape[1],  # the encoder's hidden size
            proj["proj_out.weight"].shape[0],
            proj["latents"].shape[1],
            n_layers,
        )
    for key, what in OTHER_LAYOUTS:
        if key in proj:
            raise InstantStyleError(
                f"this IP-Adapter is {what}, which this toolkit does not run; {SUPPORTED}"
            )
    raise InstantStyleError(
        f"this IP-Adapter's image projection (keys {sorted(proj)[:3]}) is of no known layout; {SUPPORTED}"
    )


VIT_H_ENCODER = "h94/IP-Adapter/models/image_encoder"
BIGG_ENCODER = "h94/IP-Adapter/sdxl_models/image_encoder"


def check_encoder(info: AdapterInfo, image_encoder) -> None:
    """The encoder gives what the adapter reads: its projection (basic) or its hidden states (plus)."""
    config = image_encoder.config
    proj_dim, hidden = config.projection_dim, config.hidden_size
    pairs = (
        "the classic ViT-H vs ViT-bigG mix-up: *_vit-h adapters need "
        f"{VIT_H_ENCODER}, ip-adapter_sdxl needs {BIGG_ENCODER}"
    )
    if info.kind == "basic" and info.clip_dim != proj_dim:
        raise InstantStyleError(
            f"IP-Adapter expects {info.clip_dim}-d image embeddings but the image encoder gives {proj_dim}-d ({pairs})"
        )
    if info.kind == "plus" and info.clip_dim != hidden:
        if info.clip_dim == proj_dim:
            raise InstantStyleError(
                f"this IP-Adapter Plus reads the image encoder's {info.clip_dim}-wide patch features (hidden "
                f"states), but this encoder's hidden size is {hidden} ({info.clip_dim} is only its projection); "
                f"Plus *_vit-h adapters need the ViT-H encoder {VIT_H_ENCODER}"
            )
        raise InstantStyleError(
            f"this IP-Adapter Plus reads {info.clip_dim}-wide patch features but the image encoder's hidden "
            f"size is {hidden} ({pairs})"
        )


def check_compatible(info: AdapterInfo, image_encoder, unet, n_cross_processors: int) -> None:
    """Refuse mismatched parts before any generation starts (``unet=None``: the encoder only)."""
    check_encoder(info, image_encoder)
    if unet is None:
        return
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
