"""Write a diffusers SDXL / SD1.5 pipeline as one checkpoint in the original (LDM / A1111) key layout.

Used by ``make-tiny`` so that the single-file path (``from_single_file``) is exercised on the real
key layout that Civitai finetunes ship in: ``model.diffusion_model.*`` (UNet with
``input_blocks``/``middle_block``/``output_blocks``), ``first_stage_model.*`` (VAE), and the text
towers (SD1.5: ``cond_stage_model.transformer.*``; SDXL: ``conditioner.embedders.0.transformer.*``
for CLIP-L and ``conditioner.embedders.1.model.*`` in the OpenCLIP layout for bigG).

This is the inverse of diffusers' ``loaders/single_file_utils.py`` converters (diffusers 0.42):
the test suite loads the written file back through ``from_single_file`` and checks that every
tensor equals the diffusers-layout original, so a wrong mapping here cannot pass silently.
"""

from __future__ import annotations

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_prefixes(config) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix for a UNet2DConditionModel config (any number of levels)."""
    per = config["layers_per_block"]
    per = per if isinstance(per, int) else per[0]
    n = len(config["block_out_channels"])
    out: dict[str, str] = dict(_UNET_TOP)
    for i in range(n):
        for j in range(per):
            ldm = 1 + i * (per + 1) + j
            out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{ldm}.0"
            out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{ldm}.1"
        out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
        up_has_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (per + 1) + j}.0"
            out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (per + 1) + j}.1"
        out[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * (per + 1) + per}.{2 if up_has_attn else 1}"
    out["mid_block.resnets.0"] = "middle_block.0"
    out["mid_block.attentions.0"] = "middle_block.1"
    out["mid_block.resnets.1"] = "middle_block.2"
    return out


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str] | None = None) -> str:
    for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):  # longest prefix first
        if key.startswith(hf + "."):
            rest = key[len(hf) + 1 :]
            if inner and ".resnets." in hf:
                head, _, tail = rest.partition(".")
                rest = f"{inner.get(head, head)}.{tail}"
            return f"{ldm}.{rest}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = unet_prefixes(config)
    return {f"model.diffusion_model.{_rename(k, prefixes, _RESNET)}": v for k, v in state_dict.items()}


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    n = len(config["up_block_types"])
    prefixes = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        prefixes[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        prefixes[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for i in range(len(config["down_block_types"])):
        prefixes[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
    for i in range(n):
        prefixes[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{n - 1 - i}.block"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{n - 1 - i}.upsample"
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state_dict.items():
        new = key
        for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(hf + "."):
                new = ldm + key[len(hf) :]
                break
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in new:
            for hf, ldm in attn.items():
                new = new.replace(f".attn_1.{hf}.", f".attn_1.{ldm}.")
            if value.ndim == 2:  # linear -> 1x1 conv, as the original checkpoints store it
                value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value
    return out


def openclip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in OpenCLIP's layout (fused in_proj, c_fc/c_proj)."""
    top = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out = {prefix + ldm: state_dict[hf] for hf, ldm in top.items()}
    out[prefix + "text_projection"] = state_dict["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[3]) for k in state_dict if k.startswith("text_model.encoder.layers.")})
    for n in layers:
        hf, ldm = f"text_model.encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{ldm}attn.in_proj_{kind}"] = torch.cat(
                [state_dict[f"{hf}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            out[f"{ldm}attn.out_proj.{kind}"] = state_dict[f"{hf}self_attn.out_proj.{kind}"]
            out[f"{ldm}ln_1.{kind}"] = state_dict[f"{hf}layer_norm1.{kind}"]
            out[f"{ldm}ln_2.{kind}"] = state_dict[f"{hf}layer_norm2.{kind}"]
            out[f"{ldm}mlp.c_fc.{kind}"] = state_dict[f"{hf}mlp.fc1.{kind}"]
            out[f"{ldm}mlp.c_proj.{kind}"] = state_dict[f"{hf}mlp.fc2.{kind}"]
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """One original-layout state dict for an SDXL (two text towers) or SD1.5 (one) pipeline."""
    sd = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    sd.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    # The original files hold CLIP-L under ``text_model.*`` (transformers 5 names CLIPTextModel's keys without it).
    clip_l = {
        (k if k.startswith("text_model.") else f"text_model.{k}"): v
        for k, v in pipe.text_encoder.state_dict().items()
        if not k.endswith("position_ids")
    }
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in clip_l.items()})
        sd.update(openclip_to_ldm(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        sd.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_l.items()})
    return {k: v.detach().contiguous() for k, v in sd.items()}
