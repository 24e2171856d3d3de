"""Stock diffusers on the tiny model, for equivalence tests (imported by test modules and conftests)."""

from __future__ import annotations


def load_stock_sdxl(tiny_paths, feature_extractor):
    """Stock diffusers SDXL + IP-Adapter from the tiny files, through diffusers' own loaders (not ours),
    with our image preprocessing so both sides see the same pixels. Each caller gets its own pipeline."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths["base"]))
    pipe.load_ip_adapter(
        str(tiny_paths["adapter"].parent.parent),
        subfolder="sdxl_models",
        weight_name="ip-adapter_sdxl.safetensors",
        image_encoder_folder="image_encoder",
    )
    pipe.feature_extractor = feature_extractor
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_stock_vit_h(tiny_paths, feature_extractor, weight_name="ip-adapter-plus_sdxl_vit-h.safetensors"):
    """Stock diffusers SDXL + one of the tiny ViT-H adapters (Plus by default) as h94 lays them out:
    ``sdxl_models/<weight_name>`` with the ViT-H encoder in ``models/image_encoder``, through
    diffusers' own ``load_ip_adapter`` (it builds the Resampler itself)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths["base"]))
    pipe.load_ip_adapter(
        str(tiny_paths["plus_adapter"].parent.parent),
        subfolder="sdxl_models",
        weight_name=weight_name,
        image_encoder_folder="models/image_encoder",
    )
    pipe.feature_extractor = feature_extractor
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_stock_sd15(tiny_paths, feature_extractor, weight_name="ip-adapter_sd15.safetensors"):
    """Stock diffusers SD1.5 + ``ip-adapter_sd15`` (or ``weight_name``, e.g. ``ip-adapter-plus_sd15.safetensors``)
    from the tiny files (``StableDiffusionPipeline.from_pretrained`` + ``load_ip_adapter`` with h94's ``models``
    layout), with our image preprocessing. Each caller gets its own."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_paths["sd15_base"]))
    pipe.load_ip_adapter(
        str(tiny_paths["sd15_adapter"].parent.parent),
        subfolder="models",
        weight_name=weight_name,
        image_encoder_folder="image_encoder",
    )
    pipe.feature_extractor = feature_extractor
    pipe.set_progress_bar_config(disable=True)
    return pipe
