"""The stylize modes from the command line: bad input is one line, exit 2, no output file; good input
writes a PNG carrying every new parameter, at the content image's aspect ratio."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instantstyle.cli import main


@pytest.fixture
def run(tmp_path, capsys):
    def _run(*args, out="out.png"):
        path = tmp_path / out
        code = main([*args, "--out", str(path), "--quiet"])
        err = capsys.readouterr().err
        return code, err, path

    return _run


def generate(style_images, content_images, *extra):
    return [
        "generate",
        "--base",
        "tiny",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "1",
        "--content",
        str(content_images["content"]),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--mask", "small_mask"), "32x32 but the content image is 64x64"),
        (("--mask", "rgb_mask"), "has 3 channels (mode RGB)"),
        (("--strength", "0"), "--strength: Input should be greater than 0"),
        (("--strength", "1.5"), "--strength: Input should be less than or equal to 1"),
        (("--strength", "0.5", "--style-mask", "rgb_mask"), "style mask 1 '"),
        ((), "--content needs a way to use it"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(run, style_images, content_images, extra, message):
    extra = [str(content_images[e]) if e in content_images else e for e in extra]
    code, err, path = run(*generate(style_images, content_images, *extra))
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("instantstyle: error:")
    assert not path.exists()


def test_mismatched_controlnet_is_refused_before_loading(run, tmp_path, style_images, content_images):
    from diffusers import ControlNetModel

    from instantstyle.testing.tiny import tiny_unet_config

    cfg = {
        k: v
        for k, v in tiny_unet_config().items()
        if k not in ("sample_size", "out_channels", "up_block_types")
    }
    cfg.update(
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        conditioning_embedding_out_channels=(16, 32),
    )
    cfg.pop("mid_block_type")
    ControlNetModel(**cfg).save_pretrained(tmp_path / "cn-sd15ish")
    code, err, path = run(
        *generate(style_images, content_images, "--control", f"canny={tmp_path / 'cn-sd15ish'}")
    )
    assert code == 2 and "does not match the base model: its cross_attention_dim is 32" in err
    assert not path.exists()


def test_content_image_over_the_pixel_limit(run, style_images, content_images):
    args = generate(style_images, content_images, "--strength", "0.5", "--max-pixels", "5000")
    args[args.index(str(content_images["content"]))] = str(content_images["big"])  # 80x80 = 6400 px
    code, err, path = run(*args)
    assert code == 2 and "content image" in err and "over the limit of 5000" in err and not path.exists()


def test_custom_controlnet_needs_its_image(run, tiny_paths, style_images, content_images):
    code, err, path = run(
        *generate(style_images, content_images, "--control", str(tiny_paths["controlnet_canny"]))
    )
    assert code == 2 and "needs its --control-image" in err and not path.exists()


def test_stylize_plus_writes_png_with_metadata_at_content_aspect(run, style_images, content_images):
    code, err, path = run(
        "stylize",
        "--base",
        "tiny",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a box",
        "--content",
        str(content_images["wide"]),
        "--steps",
        "1",
        "--seed",
        "3",
    )
    assert code == 0, err
    from instantstyle.images import read_metadata

    meta = read_metadata(path)
    # 96x64 content -> the authors' rule scaled to the tiny model (short 64, long 80, multiples of 16)
    assert Image.open(path).size == (80, 48)
    assert meta["task"] == "plus" and meta["scale"] == 1.2 and meta["scheduler"] == "ddim"
    assert meta["content_ip_scale"] == 0.2 and meta["inversion_steps"] == 1 and meta["guidance"] == 5.0
    assert meta["controlnets"] == [{"kind": "tile", "model": "tiny", "scale": 0.4}]
    assert len(meta["content_sha256"]) == 64 and meta["output_size"] == [80, 48]
    assert meta["negative_prompt"] == "lowres, low quality, worst quality, deformed, noisy, blurry"
    assert meta["inversion"] == "renoise" and meta["renoise_steps"] == 1 and meta["noise_regularization"]


def test_generate_mode_plus_is_the_same_as_stylize(run, style_images, content_images):
    code, err, path = run(
        "generate",
        "--mode",
        "plus",
        "--base",
        "tiny",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a box",
        "--content",
        str(content_images["content"]),
        "--steps",
        "1",
        "--seed",
        "3",
        "--scheduler",
        "euler",
    )
    assert code == 2 and "task plus samples with DDIM" in err and not path.exists()


def test_fit_size_keeps_aspect():
    from instantstyle.sizes import fit_size

    assert fit_size(1000, 1500, 1024, 32) == (1024, 1536, (1024, 1536))
    assert fit_size(1333, 1000, 1024, 32) == (1376, 1024, (1365, 1024))
    assert fit_size(96, 64, 64, 8) == (96, 64, (96, 64))
    from instantstyle.errors import InstantStyleError

    with pytest.raises(InstantStyleError, match="too elongated"):
        fit_size(100, 1000, 1024, 32)


def test_canny_and_control_parsing():
    from instantstyle import models
    from instantstyle.control import ControlSpec, canny, parse_control

    a = np.zeros((32, 32, 3), np.uint8)
    a[8:24, 8:24] = 255
    edges = np.asarray(canny(Image.fromarray(a), 50, 200))
    assert edges.shape == (32, 32, 3) and edges[16, 6:10, 0].max() == 255 and edges[16, 16, 0] == 0
    assert parse_control("canny") == ControlSpec("canny", models.DEFAULT_CONTROLNET_CANNY)
    assert parse_control("tile", base="tiny") == ControlSpec("tile", "tiny")
    assert parse_control("canny=./cn") == ControlSpec("canny", "./cn")
    assert parse_control("org/depth-sdxl").kind == "custom"


def test_missing_hub_controlnet_names_the_fetch_command(run, style_images, content_images):
    code, err, path = run(
        *generate(style_images, content_images, "--control", "canny=nobody/no-such-controlnet")
    )
    assert code == 2 and "instantstyle download nobody/no-such-controlnet" in err and not path.exists()
