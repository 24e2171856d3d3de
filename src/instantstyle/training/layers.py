"""Trainable IP-Adapter layers on chosen UNet blocks, and export to the public h94 file layout.

Decision (issue 7: "no IP weights" vs "weights stay at init"): blocks outside the chosen set get
**no IP-Adapter weights at all**. During training their cross-attention keeps its plain
processor, so they never see image features and cost no memory or compute. In the saved file
(which must carry every cross-attention layer for the h94 layout and our loader), their
``to_k_ip``/``to_v_ip`` are **zeros**. A zero ``to_v_ip`` makes that block's image branch exactly
zero whatever the keys and the scale (``softmax(q k^T) @ 0 = 0``, and ``h + s * 0 == h`` bit for
bit), so the file behaves exactly like the trained model under any ``--mode``/``--blocks``:
``--mode full`` equals the trained blocks. Keeping an ``--init`` adapter's original weights in
those blocks would instead pair them with a retrained projection whose token space they were
never trained on -- an untested model -- so we do not.

Fresh adapters follow the IP-Adapter recipe: the projection is a new ``ImageProjection`` (Linear +
LayerNorm, ``tokens`` tokens), and each chosen ``to_k_ip``/``to_v_ip`` starts as a copy of the
block's own text ``to_k``/``to_v`` weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import adapter as adapter_mod
from .. import blocks
from ..errors import InstantStyleError
from ..files import atomic_write
from ..processors.text_only import TextOnlyProcessor

H94_PROJ = {
    "proj.weight": "image_embeds.weight",
    "proj.bias": "image_embeds.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}


def chosen_processors(unet, spec: str) -> list[str]:
    """attn2 processor names to train for a ``--blocks`` spec (presets, modules, layers; values 0 or 1)."""
    parsed = blocks.parse_spec(spec)
    bad = [(n, v) for n, v in parsed if v not in (0.0, 1.0)]
    if bad:
        raise InstantStyleError(
            f"--blocks '{spec}': '{bad[0][0]}={bad[0][1]}' -- training takes 1 (train) or 0 (exclude) per name; "
            "scales are for generate"
        )
    scales = blocks.resolve(blocks.discover(unet), parsed)
    chosen = [p for p, s in scales.items() if s > 0]
    if not chosen:
        raise InstantStyleError(
            f"--blocks '{spec}' selects no cross-attention layer; nothing would be trained"
        )
    return chosen


def h94_ids(unet) -> dict[str, int]:
    """attn2 processor name -> its number in the h94 file (its index in ``unet.attn_processors``)."""
    return {name: i for i, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")}


def initial_weights(unet, chosen: list[str], clip_dim: int, tokens: int, init_sd: Mapping | None, seed: int):
    """Starting weights: ``(projection state dict in diffusers names, {processor: (k, v)}, tokens)``."""
    from diffusers.models.embeddings import ImageProjection

    cross = unet.config.cross_attention_dim
    ids = h94_ids(unet)
    if init_sd is not None:
        info = adapter_mod.inspect(init_sd)
        if info.kind != "basic":
            raise InstantStyleError(
                "--init is an IP-Adapter Plus (a Resampler over patch features); adapter training trains "
                "the global ImageProjection adapter (ip-adapter_sdxl layout): start from a global adapter or from scratch"
            )
        if info.clip_dim != clip_dim:
            raise InstantStyleError(
                f"--init adapter expects {info.clip_dim}-d image embeddings but the image encoder gives {clip_dim}-d; "
                "use the encoder it was trained with"
            )
        if info.cross_dim != cross or info.n_layers != len(ids):
            raise InstantStyleError(
                f"--init adapter has {info.n_layers} layers of {info.cross_dim}-d tokens; this UNet needs "
                f"{len(ids)} layers of {cross}-d: it was trained for another base model family"
            )
        proj = {H94_PROJ[k]: v.float().clone() for k, v in init_sd["image_proj"].items()}
        ip = init_sd["ip_adapter"]
        kv = {
            p: (
                ip[f"{ids[p]}.to_k_ip.weight"].float().clone(),
                ip[f"{ids[p]}.to_v_ip.weight"].float().clone(),
            )
            for p in chosen
        }
        return proj, kv, info.tokens
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        proj = {
            k: v.float().clone() for k, v in ImageProjection(clip_dim, cross, tokens).state_dict().items()
        }
    finally:
        torch.random.set_rng_state(gen_state)
    kv = {}
    for p in chosen:
        attn = unet.get_submodule(p.removesuffix(".processor"))
        kv[p] = (attn.to_k.weight.detach().float().clone(), attn.to_v.weight.detach().float().clone())
    return proj, kv, tokens


def install(unet, chosen: list[str], proj_sd: Mapping, kv: Mapping, tokens: int) -> list[torch.nn.Parameter]:
    """Put trainable (fp32) IP layers on the chosen processors and the projection on ``unet``.

    Everything else in ``unet`` is frozen. Returns the trainable parameters. The UNet is owned by
    the trainer (loaded for it), so this is a permanent change, not a scoped patch.
    """
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    unet.requires_grad_(False)
    device = next(unet.parameters()).device
    cross = unet.config.cross_attention_dim
    procs = dict(unet.attn_processors)
    for name in h94_ids(unet):
        if name not in chosen and not isinstance(procs[name], TextOnlyProcessor):
            procs[name] = TextOnlyProcessor(procs[name])
    for name in chosen:
        k, v = kv[name]
        proc = IPAdapterAttnProcessor2_0(
            hidden_size=k.shape[0], cross_attention_dim=cross, num_tokens=(tokens,), scale=1.0
        )
        proc.load_state_dict({"to_k_ip.0.weight": k, "to_v_ip.0.weight": v})
        procs[name] = proc.to(device, torch.float32)
    unet.set_attn_processor(procs)
    proj = ImageProjection(
        image_embed_dim=proj_sd["image_embeds.weight"].shape[1],
        cross_attention_dim=cross,
        num_image_text_embeds=tokens,
    )
    proj.load_state_dict(dict(proj_sd))
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([proj]).to(device, torch.float32)
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    return trainable_parameters(unet, chosen, set_grad=True)


def trainable_parameters(unet, chosen: list[str], set_grad: bool = False) -> list[torch.nn.Parameter]:
    """The projection's and the chosen processors' parameters, in a fixed order."""
    params = list(unet.encoder_hid_proj.parameters())
    for name in chosen:
        params += list(unet.get_submodule(name).parameters())
    if set_grad:
        for p in params:
            p.requires_grad_(True)
    return params


def trainable_state(unet, chosen: list[str]) -> dict[str, torch.Tensor]:
    """Named trainable tensors (for checkpoints): ``proj.<param>`` and ``<processor>.<param>``."""
    out = {f"proj.{k}": v for k, v in unet.encoder_hid_proj.state_dict().items()}
    for name in chosen:
        out.update({f"{name}.{k}": v for k, v in unet.get_submodule(name).state_dict().items()})
    return out


def load_trainable_state(unet, chosen: list[str], state: Mapping[str, torch.Tensor]) -> None:
    current = trainable_state(unet, chosen)
    if set(current) != set(state):
        raise InstantStyleError(
            "checkpoint holds other trained layers than this run (different --blocks?); "
            "resume with the same configuration"
        )
    with torch.no_grad():
        for k, v in current.items():
            v.copy_(state[k])


def export_h94(unet, chosen: list[str], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Flat h94 state dict (``image_proj.*``, ``ip_adapter.N.to_{k,v}_ip.weight``) for every attn2 layer.

    Layers outside ``chosen`` are zeros (see the module docstring).
    """
    proj = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    inverse = {v: k for k, v in H94_PROJ.items()}
    flat = {f"image_proj.{inverse[k]}": v.detach().to("cpu", dtype).contiguous() for k, v in proj.items()}
    cross = unet.config.cross_attention_dim
    chosen_set = set(chosen)
    for name, idx in h94_ids(unet).items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if name in chosen_set:
            proc = unet.get_submodule(name)
            k, v = proc.to_k_ip[0].weight, proc.to_v_ip[0].weight
        else:
            k, v = torch.zeros(attn.to_k.out_features, cross), torch.zeros(attn.to_k.out_features, cross)
        flat[f"ip_adapter.{idx}.to_k_ip.weight"] = k.detach().to("cpu", dtype).contiguous()
        flat[f"ip_adapter.{idx}.to_v_ip.weight"] = v.detach().to("cpu", dtype).contiguous()
    return flat


def save_h94(flat: Mapping[str, torch.Tensor], path, metadata: Mapping[str, str] | None = None):
    """Write a flat h94 state dict as safetensors, atomically."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(dict(flat), str(tmp), metadata=dict(metadata or {}))
    return path
