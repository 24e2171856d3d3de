"""IP-Adapter Plus on SD1.5 (``ip-adapter-plus_sd15``: a 16-token Resampler over the ViT-H encoder's
patch features, tokens as wide as SD1.5's cross-attention) on the tiny SD1.5.

The tiny file is made by ``sources.tiny_adapters.random_plus_adapter_state_dict`` on the tiny SD1.5
UNet and written by ``make-tiny`` as h94 lays it out (``models/ip-adapter-plus_sd15.safetensors``
beside ``models/image_encoder``). Stock side: ``StableDiffusionPipeline`` + ``load_ip_adapter`` +
``set_ip_adapter_scale(<InstantStyle's SD1.5 style dict>)`` + ``ip_adapter_image``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle.cli import main
from stock_diffusers import load_stock_sd15

TOL = 2 / 255
STEPS = 2
BASE = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0, width=64, height=64)
STYLE_DICT = {"up": {"block_1": [1.0, 1.0, 1.0]}}  # infer_style_sd15.py's target_blocks=["up_blocks.1"]


@pytest.fixture(scope="module")
def sd15_plus(tiny_paths):
    """InstantStyle on the tiny SD1.5 with the tiny ``ip-adapter-plus_sd15``, from disk (CPU, fp32)."""
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["sd15_base"]),
        str(tiny_paths["sd15_plus_adapter"]),
        str(tiny_paths["sd15_image_encoder"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
        speed="plain",
    )


def ours(model, **kw) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in model.generate(**{**BASE, **kw})])


def test_plus_sd15_equals_stock_diffusers_with_the_style_preset(sd15_plus, tiny_paths, style_images):
    from diffusers import EulerDiscreteScheduler
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    info = sd15_plus.adapter_info
    assert (info.kind, info.clip_dim, info.cross_dim, info.tokens, info.n_layers) == ("plus", 48, 32, 16, 16)
    assert sd15_plus.family == "sd15" and sd15_plus.styles.features == "patch"
    (projection,) = sd15_plus.pipe.unet.encoder_hid_proj.image_projection_layers
    assert isinstance(projection, IPAdapterPlusImageProjection)  # built by diffusers' own loader

    stock = load_stock_sd15(tiny_paths, sd15_plus.feature_extractor, "ip-adapter-plus_sd15.safetensors")
    stock.scheduler = EulerDiscreteScheduler.from_config(stock.scheduler.config)  # our default sampler
    stock.set_ip_adapter_scale(STYLE_DICT)
    red, blue = str(style_images["red"]), str(style_images["blue"])
    ref = stock(
        prompt=BASE["prompt"],
        num_inference_steps=STEPS,
        guidance_scale=BASE["guidance"],
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        ip_adapter_image=Image.open(red),
    ).images
    mine = ours(sd15_plus, style=[red], mode="style")
    assert np.abs(mine - ref).max() <= TOL
    # The check can fail: another style image moves the output far beyond the tolerance.
    assert np.abs(ours(sd15_plus, style=[blue], mode="style") - ref).max() > 10 * TOL


def _cli(tmp_path, style_images, *flags):
    out = tmp_path / "never.png"
    argv = ["generate", "--prompt", "a cat", "--steps", "1", "--style", str(style_images["red"])]
    code = main([*argv, "--out", str(out), "--device", "cpu", "--quiet", *flags])
    return code, out


@pytest.mark.parametrize(
    "case, expect",
    [
        ("sdxl-plus-on-sd15", "was made for another model family than the SD1.5 base"),
        ("sd15-plus-on-sdxl", "was made for another model family than the SDXL base"),
        ("subtraction", "does not apply to an IP-Adapter Plus"),
    ],
)
def test_plus_sd15_bad_input_is_one_line(tmp_path, tiny_paths, style_images, capsys, case, expect):
    p = {k: str(v) for k, v in tiny_paths.items()}
    vit_h = ["--image-encoder", p["vit_h_image_encoder"]]
    flags = {
        "sdxl-plus-on-sd15": ["--base", p["sd15_base"], "--adapter", p["plus_adapter"], *vit_h],
        "sd15-plus-on-sdxl": ["--base", p["base"], "--adapter", p["sd15_plus_adapter"], *vit_h],
        # The tiny references: tiny-sd15-plus implies the tiny ViT-H encoder, tiny-sd15 its text tower.
        "subtraction": ["--base", "tiny-sd15", "--adapter", "tiny-sd15-plus", "--content-prompt", "a dog"],
    }[case]
    code, out = _cli(tmp_path, style_images, *flags)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("instantstyle: error: ") and expect in err, err
    if case != "subtraction":  # names the Plus file of the base's family
        assert (
            "ip-adapter-plus_sd15" if case == "sdxl-plus-on-sd15" else "ip-adapter-plus_sdxl_vit-h"
        ) in err
    else:  # names both alternatives, the SD1.5 global adapter among them
        assert "ip-adapter_sd15" in err and "--negative-style" in err
