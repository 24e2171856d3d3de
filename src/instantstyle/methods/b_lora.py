"""B-LoRA (Frenkel et al., arXiv 2403.14572): implicit style-content separation with two LoRAs.

Sources: the paper (Sec. 4.3-4.5) and the authors' ``train_dreambooth_b-lora_sdxl.py`` and
``inference.py`` (yardenfren1996/B-LoRA, MIT). Training on one image is ``training.b_lora``
(``instantstyle train-blora``); this module is the method: the LoRA's layers, its files and
their checks, its scoped injection, and generation.

- Sec. 4.3-4.4: the LoRA sits on ``to_q/to_k/to_v/to_out.0`` of both attentions (self and cross)
  of the transformer blocks of two neighbouring modules, ``blocks.BLORA_CONTENT_BLOCK`` (content)
  and ``blocks.BLORA_STYLE_BLOCK`` (style) (``lora_targets``).
- Sec. 5 (style transfer by text): at generation only the style block's LoRA is loaded, with the
  trigger in the prompt ("... in [v] style"). ``b_lora_scale`` multiplies the LoRA update (the
  official ``--style_alpha`` scales both factors, so its alpha = our ``b_lora_scale ** 0.5``).
  Sampling defaults are the request's (the authors' ``inference.py`` uses the pipeline's).

A trained B-LoRA is a directory with ``pytorch_lora_weights.safetensors`` (diffusers'
``unet.``-prefixed PEFT keys) and ``blora.json`` (settings, base model identity, losses). A LoRA
is refused on a base whose UNet architecture or weights differ from the one it was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import blocks
from ..errors import InstantStyleError
from . import _common

TRIGGER = "[v]"
INFO_FILE = "blora.json"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ARCH_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "use_linear_projection",
)


# ---------------------------------------------------------------------- base model identity


def architecture_fingerprint(unet_config) -> str:
    """Hash of the UNet's architecture (config keys that shape the weights), from a config dict."""
    arch = {k: unet_config.get(k) for k in ARCH_KEYS}
    text = json.dumps(arch, sort_keys=True, default=list).replace("(", "[").replace(")", "]")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(unet) -> str:
    """Hash of a few weights (``conv_in`` and the style block's first projection), as fp16 bytes."""
    h = hashlib.sha256()
    for name in ("conv_in.weight", lora_targets(unet, [blocks.BLORA_STYLE_BLOCK])[0] + ".weight"):
        h.update(unet.get_parameter(name).detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def lora_targets(unet, module_names) -> list[str]:
    """The projection layers B-LoRA trains in ``module_names`` (``<layer>.attn{1,2}.to_*``)."""
    modules = {m.name: m for m in blocks.discover(unet)}
    missing = [n for n in module_names if n not in modules]
    if missing:
        raise InstantStyleError(f"this UNet has no {', '.join(missing)}; B-LoRA needs an SDXL-family UNet")
    return [
        f"{modules[n].layer_name(i)}.{attn}.{proj}"
        for n in module_names
        for i in range(modules[n].layers)
        for attn in ("attn1", "attn2")
        for proj in PROJECTIONS
    ]


# ---------------------------------------------------------------------- scoped LoRA


@contextlib.contextmanager
def scoped_lora(
    unet,
    targets: list[str],
    rank: int,
    alpha: float,
    state_dict: dict | None = None,
    adapter_name: str = "blora",
    seed: int = 0,
) -> Iterator[list[torch.nn.Parameter]]:
    """Inject a PEFT LoRA into exactly ``targets`` for the block; yields its parameters.

    The LoRA's random initialisation (``lora_A``) comes from ``seed``, not from the global RNG.

    On exit the original ``Linear`` modules, the ``requires_grad`` flags and the model's attributes
    are put back, so the UNet is exactly as before (same module objects, same state dict). A layer
    that already carries user LoRAs (``instantstyle.loras``) gets B-LoRA as one more adapter, deleted
    from it on exit.
    """
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import set_peft_model_state_dict
    except ImportError:
        raise InstantStyleError("B-LoRA needs peft: pip install 'instantstyle[train]'") from None

    originals = {name: unet.get_submodule(name) for name in targets}
    wrapped = [m for m in originals.values() if isinstance(m, BaseTunerLayer)]
    if any(adapter_name in m.lora_A for m in wrapped):  # type: ignore[attr-defined]
        raise InstantStyleError(f"this UNet already carries the adapter {adapter_name!r}; unload it first")
    grads = {n: p.requires_grad for n, p in unet.named_parameters()}
    attrs = dict(vars(unet))
    configs = dict(getattr(unet, "peft_config", None) or {})
    try:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft warns that a UNet with user LoRAs gets one more adapter: that is the intent.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=adapter_name)
        if state_dict is not None:
            result = set_peft_model_state_dict(unet, state_dict, adapter_name=adapter_name)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                raise InstantStyleError(
                    f"B-LoRA weights do not fit this UNet (unexpected key {unexpected[0]})"
                )
        yield [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    finally:
        with warnings.catch_warnings():  # peft names the adapter it activates instead: loras' scope decides
            warnings.simplefilter("ignore", UserWarning)
            for module in wrapped:
                module.delete_adapter(adapter_name)  # type: ignore[attr-defined]
        for name, module in originals.items():
            parent, _, attr = name.rpartition(".")
            setattr(unet.get_submodule(parent), attr, module)
        if "peft_config" in attrs:  # the same dict, which add_adapter extended
            attrs["peft_config"].clear()
            attrs["peft_config"].update(configs)
        for key in [k for k in vars(unet) if k not in attrs]:
            delattr(unet, key)
        for key, value in attrs.items():
            if vars(unet).get(key) is not value:
                setattr(unet, key, value)
        for n, p in unet.named_parameters():
            p.requires_grad_(grads[n])


# ---------------------------------------------------------------------- generation


def read_info(lora_dir: str | Path, unet_config=None) -> dict:
    """``blora.json`` of a trained B-LoRA; with ``unet_config``, refuse another architecture."""
    path = Path(lora_dir)
    if not (path / INFO_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise InstantStyleError(
            f"--b-lora '{lora_dir}' is not a B-LoRA directory (needs {INFO_FILE} and {WEIGHTS_FILE}); "
            "train one with `instantstyle train-blora --image REF --out DIR`"
        )
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError):
        raise InstantStyleError(
            f"--b-lora '{lora_dir}': {INFO_FILE} is not valid JSON; train the LoRA again"
        ) from None
    if unet_config is not None and info.get("architecture") != architecture_fingerprint(unet_config):
        raise InstantStyleError(
            f"--b-lora '{lora_dir}' was trained on another base model ({info.get('base')}, UNet architecture "
            f"{info.get('architecture')}); this base's UNet is {architecture_fingerprint(unet_config)}; "
            "train a B-LoRA on this base with `instantstyle train-blora --base ...`"
        )
    return info


def load_style(lora_dir: str | Path, unet) -> tuple[dict, dict[str, torch.Tensor]]:
    """The B-LoRA's record and its style block's weights only (PEFT keys), checked against ``unet``."""
    from safetensors.torch import load_file

    info = read_info(lora_dir, unet.config)
    if info.get("weights") != weights_fingerprint(unet):
        raise InstantStyleError(
            f"--b-lora '{lora_dir}' was trained on another base model ({info.get('base')}): same architecture but "
            "different weights; train a B-LoRA on this base with `instantstyle train-blora --base ...`"
        )
    prefix = f"unet.{info['style_block']}."
    weights = load_file(str(Path(lora_dir) / WEIGHTS_FILE))
    style = {k.removeprefix("unet."): v for k, v in weights.items() if k.startswith(prefix)}
    if not style:
        raise InstantStyleError(
            f"--b-lora '{lora_dir}' has no weights for the style block {info['style_block']}"
        )
    return info, style


def run(model, req, *, style_images=None, on_step=None):
    from ..loras import also_active
    from ..schedulers import scoped_scheduler

    pipe, unet = model.pipe, model.pipe.unet
    # 1. Inputs: the style comes from the LoRA, not from an image.
    if style_images or req.style:
        raise InstantStyleError(
            "--method b-lora takes its style from --b-lora DIR (trained with `instantstyle "
            "train-blora`); remove --style"
        )
    st = _common.setup(model, req)
    info, style = load_style(req.b_lora, unet)
    prompt = req.prompt if info["trigger"] in req.prompt else f"{req.prompt} in {info['trigger']} style"
    # 2. Only the style block's LoRA, for this call; the UNet is restored afterwards. Its strength
    # is its adapter weight, next to the request's user LoRAs (``also_active``), not a
    # cross_attention_kwargs scale (which would scale every LoRA in the UNet).
    targets = lora_targets(unet, [info["style_block"]])
    do_cfg = req.guidance > 1.0
    with (
        _common.ip_adapter_off(model),
        scoped_lora(unet, targets, info["rank"], info["lora_alpha"], style),
        also_active(unet, {"blora": req.b_lora_scale}),
        scoped_scheduler(pipe, req.scheduler),
        torch.inference_mode(),
    ):
        images = pipe(
            prompt=prompt,
            negative_prompt=req.negative_prompt,
            ip_adapter_image_embeds=_common.neutral_ip_embeds(model, do_cfg),
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            width=st.width,
            height=st.height,
            num_images_per_prompt=req.num_images,
            generator=st.generator(),
            callback_on_step_end=_common.step_callback(req.steps, on_step),
        ).images
    extra = {
        "prompt_used": prompt,
        "lora_image_sha256": info.get("image_sha256"),
        "lora_steps": info.get("steps"),
        "lora_block": info["style_block"],
    }
    return _common.finish(model, req, images, st, extra=extra)
