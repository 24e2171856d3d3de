"""Single-file SDXL bases (original LDM key layout) and the VAE override.

The tiny checkpoint is written by ``make-tiny`` in the original layout (``testing.ldm_layout``);
loading it back through diffusers' ``from_single_file`` must give every tensor of the
diffusers-layout model it was written from, and generating from it must equal stock diffusers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle.cli import main

TOL = 2 / 255
STYLE = {"up": {"block_0": [0.0, 1.0, 0.0]}}


@pytest.fixture(scope="module")
def single_model(tiny_paths):
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["single_file"]),
        str(tiny_paths["adapter"]),
        str(tiny_paths["image_encoder"]),
        base_config=str(tiny_paths["single_file_config"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
        speed="plain",
    )


def _ours(model, style, **kw):
    images = model.generate(
        prompt="a cat", steps=3, guidance=5.0, seed=0, style=[str(style)], mode="style", **kw
    )
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


def test_original_layout_round_trips_through_from_single_file(single_model):
    """Every tensor loaded by diffusers from our LDM-layout file equals the model it was written from."""
    from instantstyle.testing.tiny import build_tiny

    original = build_tiny(text_widths=(16, 48)).pipe
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want, got = getattr(original, name).state_dict(), getattr(single_model.pipe, name).state_dict()
        if name == "unet":  # ours carries the IP-Adapter's extra weights on top
            got = {k: v for k, v in got.items() if k in want}
        assert set(want) == set(got), name
        bad = [k for k in want if not torch.equal(want[k], got[k])]
        assert not bad, (name, bad[:3])


def test_single_file_base_equals_stock_diffusers(single_model, tiny_paths, style_images):
    from diffusers import StableDiffusionXLPipeline

    stock = StableDiffusionXLPipeline.from_single_file(
        str(tiny_paths["single_file"]), config=str(tiny_paths["single_file_config"]), local_files_only=True
    )
    stock.load_ip_adapter(
        str(tiny_paths["adapter"].parent.parent),
        subfolder="sdxl_models",
        weight_name="ip-adapter_sdxl.safetensors",
        image_encoder_folder="image_encoder",
    )
    stock.feature_extractor = single_model.feature_extractor
    stock.set_progress_bar_config(disable=True)
    stock.set_ip_adapter_scale(STYLE)
    ref = stock(
        prompt="a cat",
        num_inference_steps=3,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        ip_adapter_image=Image.open(style_images["red"]),
    ).images
    mine = _ours(single_model, style_images["red"])
    assert np.abs(mine - ref).max() <= TOL
    other = _ours(single_model, style_images["blue"])  # the check can fail: the style image matters
    assert np.abs(other - ref).max() > 10 * TOL


@pytest.mark.parametrize("layout", ["diffusers", "single-file"])
def test_vae_override_is_used(single_model, tiny_paths, style_images, tmp_path, layout):
    """--vae replaces the decoder (a diffusers directory or one LDM-layout file), and it shows."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from instantstyle import InstantStyle
    from instantstyle.testing.ldm_layout import vae_to_ldm

    vae = AutoencoderKL.from_pretrained(str(tiny_paths["base"] / "vae"))
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)  # a different VAE with the same architecture
    if layout == "diffusers":
        vae.save_pretrained(tmp_path / "vae")
        spec = tmp_path / "vae"
    else:
        spec = tmp_path / "vae.safetensors"
        save_file(vae_to_ldm(vae.state_dict(), vae.config), spec)
    with_vae = InstantStyle.from_pretrained(
        str(tiny_paths["single_file"]),
        str(tiny_paths["adapter"]),
        str(tiny_paths["image_encoder"]),
        base_config=str(tiny_paths["single_file_config"]),
        vae=str(spec),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
        speed="plain",
    )
    want, got = vae.state_dict(), with_vae.pipe.vae.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    a, b = _ours(single_model, style_images["red"]), _ours(with_vae, style_images["red"])
    assert np.abs(a - b).max() > 10 * TOL
    image = with_vae.generate(prompt="a cat", steps=1, seed=0, style=[str(style_images["red"])])[0]
    from instantstyle.images import METADATA_KEY

    assert json.loads(image.info[METADATA_KEY])["vae"] == str(spec.resolve())


@pytest.fixture
def other_files(tmp_path, tiny_paths):
    """Single files of other kinds: a lone VAE, a LoRA, an SD2-like text tower, a FLUX-like block."""
    from safetensors.torch import save_file

    t = lambda: torch.zeros(1)  # noqa: E731  (safetensors refuses shared tensors)
    files = {
        "vae": {
            "first_stage_model.encoder.conv_in.weight": t(),
            "first_stage_model.decoder.conv_in.weight": t(),
        },
        "lora": {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": t()},
        "sd2": {
            "cond_stage_model.model.token_embedding.weight": t(),
            "model.diffusion_model.input_blocks.0.0.weight": t(),
        },
        "flux": {"double_blocks.0.img_attn.norm.key_norm.scale": t()},
    }
    for name, sd in files.items():
        save_file(sd, tmp_path / f"{name}.safetensors")
    return {name: tmp_path / f"{name}.safetensors" for name in files}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("vae", "is a VAE on its own, not a supported base model; pass it with --vae"),
        ("lora", "is a LoRA, not a supported base model; pass it with --lora"),
        ("sd2", "is a Stable Diffusion 2.x checkpoint, not a supported base model"),
        ("flux", "is a FLUX checkpoint, not a supported base model"),
        ("vae_other_family", "has 16 latent channels but the base's UNet takes 4"),
    ],
)
def test_bad_single_files_one_line_nonzero_no_output(
    tmp_path, tiny_paths, style_images, other_files, capsys, case, expect
):
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--prompt",
        "a cat",
        "--steps",
        "1",
        "--style",
        str(style_images["red"]),
        "--out",
        str(out),
        "--adapter",
        str(tiny_paths["adapter"]),
        "--image-encoder",
        str(tiny_paths["image_encoder"]),
        "--device",
        "cpu",
        "--quiet",
        "--base-config",
        str(tiny_paths["single_file_config"]),
    ]
    if case == "vae_other_family":
        args += ["--base", str(tiny_paths["single_file"]), "--vae", str(tiny_paths["vae_other_family"])]
    else:
        args += ["--base", str(other_files[case])]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("instantstyle: error: ") and expect in err, err
    assert not out.exists()
