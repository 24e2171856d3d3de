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
