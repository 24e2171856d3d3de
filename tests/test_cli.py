"""The CLI end to end on the tiny model written to disk: outputs, metadata, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle.cli import main


@pytest.fixture
def run(tiny_paths, capsys):
    def _run(*args, models=True):
        argv = list(args)
        if models and argv[0] == "generate":
            defaults = {
                "--base": str(tiny_paths["base"]),
                "--adapter": str(tiny_paths["adapter"]),
                "--image-encoder": str(tiny_paths["image_encoder"]),
                "--device": "cpu",
            }
            argv += [x for flag, value in defaults.items() if flag not in argv for x in (flag, value)] + [
                "--quiet"
            ]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def test_generate_writes_png_with_parameters(run, tmp_path, style_images, tiny_model):
    out = tmp_path / "cat.png"
    code, stdout, err = run(
        "generate",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--seed",
        "5",
        "--content-prompt",
        "a red square",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert stdout.strip() == str(out)
    with Image.open(out) as im:
        meta = json.loads(im.info["instantstyle"])
        params = im.info["parameters"]
        pixels = np.asarray(im.convert("RGB"))
    assert meta["seed"] == 5 and meta["content_prompt"] == "a red square" and meta["content_scale"] == 0.5
    assert meta["mode"] == "style" and meta["active_blocks"] == ["up_blocks.0.attentions.1"]
    assert params.startswith("a cat\n") and "Seed: 5" in params and "Steps: 3" in params
    # The Python API with the same request gives the same pixels.
    api = tiny_model.generate(
        prompt="a cat", style=[str(style_images["red"])], steps=3, seed=5, content_prompt="a red square"
    )[0]
    assert np.array_equal(np.asarray(api), pixels)
    assert not list(tmp_path.glob(".*.tmp"))


def test_several_images_and_no_overwrite(run, tmp_path, style_images):
    out = tmp_path / "x.png"
    args = (
        "generate",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "1",
        "--num-images",
        "2",
        "--out",
        str(out),
    )
    assert run(*args)[0] == 0
    a, b = tmp_path / "x-0.png", tmp_path / "x-1.png"
    assert a.is_file() and b.is_file()
    before = a.read_bytes()
    code, _, err = run(*args)
    assert code == 2 and "already exists; pass --overwrite" in err and a.read_bytes() == before
    assert run(*args, "--overwrite")[0] == 0


def test_directory_output(run, tmp_path, style_images):
    code, stdout, _ = run(
        "generate",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "9",
        "--out",
        str(tmp_path) + "/",
    )
    assert code == 0 and (tmp_path / "instantstyle-9-0.png").is_file()


def test_saved_style_round_trip_through_the_cli(run, tmp_path, style_images, tiny_paths):
    enc = ["--image-encoder", str(tiny_paths["image_encoder"]), "--device", "cpu"]
    code, _, err = run(
        "style",
        "save",
        "warm",
        str(style_images["red"]),
        str(style_images["blue"]),
        "--weights",
        "0.7",
        "0.3",
        *enc,
    )
    assert code == 0, err
    assert run("style", "list")[1].split() == ["warm"]
    shown = json.loads(run("style", "show", "warm")[1])
    assert shown["weights"] == pytest.approx([0.7, 0.3])
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    common = ("--prompt", "a cat", "--steps", "2", "--seed", "4")
    assert run("generate", "--style", "@warm", *common, "--out", str(a))[0] == 0
    assert (
        run(
            "generate",
            "--style",
            str(style_images["red"]),
            "--style",
            str(style_images["blue"]),
            "--style-weights",
            "0.7",
            "0.3",
            *common,
            "--out",
            str(b),
        )[0]
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert run("style", "rm", "warm")[0] == 0 and run("style", "list")[1] == ""


def test_blocks_table(run):
    code, out, _ = run("blocks", "--base", "tiny")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("up_blocks.0.attentions.1 "))
    assert line.split()[-1] == "style"
    assert (
        next(x for x in out.splitlines() if x.startswith("down_blocks.2.attentions.1 ")).split()[-1]
        == "layout"
    )


def test_make_tiny_writes_loadable_layouts(run, tmp_path):
    code, out, _ = run("make-tiny", str(tmp_path / "t"))
    assert code == 0 and (tmp_path / "t/sdxl/model_index.json").is_file()
    assert (tmp_path / "t/IP-Adapter/sdxl_models/image_encoder/config.json").is_file()


# ------------------------------------------------------------------ bad input


def _bomb(path):
    Image.new("1", (12000, 12000)).save(path)  # 144 Mpx in a few kB


def _truncated(path, src):
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def bad_adapter(tmp_path, tiny_model):
    """An adapter made for 16-d image embeddings (the tiny encoder gives 32-d)."""
    from safetensors.torch import save_file

    from instantstyle.testing.tiny import random_adapter_state_dict

    sd = random_adapter_state_dict(tiny_model.pipe.unet, clip_dim=16)
    flat = {f"{part}.{k}": v for part in sd for k, v in sd[part].items()}
    path = tmp_path / "vit-h-like.safetensors"
    save_file(flat, path)
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "does not exist"),
        ("truncated", "truncated or corrupt"),
        ("not_image", "not an image"),
        ("bomb", "pixels, over the limit"),
        ("unknown_block", "unknown block 'up_blocks.0.attention.1'"),
        ("negative_scale", "--scale: Input should be greater than or equal to 0"),
        ("nonnumeric_scale", "--scale: Input should be a valid number"),
        ("bad_blocks_value", "is 'x', not a number"),
        ("mismatched_adapter", "expects 16-d image embeddings but the image encoder gives 32-d"),
        ("missing_dir", "does not exist; create it first"),
        ("no_style", "no style image given"),
        ("mode_and_blocks", "give --mode or --blocks, not both"),
        ("bad_size", "multiple of 8"),
        ("bad_steps", "--steps: Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_one_line_nonzero_no_output(run, tmp_path, style_images, bad_adapter, case, expect):
    out = tmp_path / "out.png"
    style = str(style_images["red"])
    extra: list[str] = []
    if case == "missing":
        style = str(tmp_path / "nope.png")
    elif case == "truncated":
        _truncated(tmp_path / "t.png", style_images["green"].with_suffix(".jpg"))
        style = str(tmp_path / "t.png")
    elif case == "not_image":
        (tmp_path / "n.png").write_text("hello")
        style = str(tmp_path / "n.png")
    elif case == "bomb":
        _bomb(tmp_path / "b.png")
        style = str(tmp_path / "b.png")
    elif case == "unknown_block":
        extra = ["--blocks", "up_blocks.0.attention.1=1"]
    elif case == "negative_scale":
        extra = ["--scale", "-1"]
    elif case == "nonnumeric_scale":
        extra = ["--scale", "strong"]
    elif case == "bad_blocks_value":
        extra = ["--blocks", "up_blocks.0.attentions.1=x"]
    elif case == "mismatched_adapter":
        extra = ["--adapter", str(bad_adapter)]
    elif case == "missing_dir":
        out = tmp_path / "no" / "such" / "dir" / "out.png"
    elif case == "mode_and_blocks":
        extra = ["--mode", "style", "--blocks", "style"]
    elif case == "bad_size":
        extra = ["--width", "100"]
    elif case == "bad_steps":
        extra = ["--steps", "-3"]
    args = ["generate", "--prompt", "a cat", "--steps", "2", "--out", str(out), *extra]
    if case != "no_style":
        args += ["--style", style]
    code, stdout, err = run(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("instantstyle: error: ") and expect in err, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_content_prompt_in_another_space_is_refused(tmp_path, style_images, capsys):
    """A ViT-H-like pair: image encoder and adapter in 16-d, SDXL's text_encoder_2 in 32-d."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    from instantstyle.testing.tiny import build_tiny, random_adapter_state_dict, tiny_vision_config

    cfg = tiny_vision_config()
    cfg.projection_dim = 16
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "enc16")
    tiny = build_tiny()
    sd = random_adapter_state_dict(tiny.pipe.unet, clip_dim=16)
    save_file({f"{p}.{k}": v for p in sd for k, v in sd[p].items()}, tmp_path / "a16.safetensors")
    tiny.pipe.save_pretrained(tmp_path / "sdxl")
    out = tmp_path / "o.png"
    common = [
        "generate",
        "--base",
        str(tmp_path / "sdxl"),
        "--adapter",
        str(tmp_path / "a16.safetensors"),
        "--image-encoder",
        str(tmp_path / "enc16"),
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "0",
        "--quiet",
        "--device",
        "cpu",
    ]
    capsys.readouterr()
    code = main([*common, "--content-prompt", "a dog", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "not in the same CLIP space" in err and "--content-text-encoder" in err
    assert err.count("\n") == 1 and not out.exists()
    # Without a content prompt the same models work.
    assert main([*common, "--out", str(out)]) == 0
    # With a text encoder in the image encoder's 16-d space, subtraction works and changes the picture.
    from transformers import CLIPTextModelWithProjection

    text_cfg = tiny.pipe.text_encoder_2.config
    text_cfg.projection_dim = 16
    torch.manual_seed(1)
    CLIPTextModelWithProjection(text_cfg).save_pretrained(tmp_path / "text16")
    tiny.pipe.tokenizer_2.save_pretrained(tmp_path / "text16")
    sub = tmp_path / "sub.png"
    assert (
        main(
            [
                *common,
                "--content-prompt",
                "a dog",
                "--content-scale",
                "2",
                "--content-text-encoder",
                str(tmp_path / "text16"),
                "--out",
                str(sub),
            ]
        )
        == 0
    )
    diff = np.abs(np.asarray(Image.open(sub), dtype=float) - np.asarray(Image.open(out), dtype=float)).max()
    assert diff > 20


def test_debug_shows_the_traceback(run, tmp_path, style_images):
    with pytest.raises(Exception, match="unknown block"):
        main(
            [
                "generate",
                "--debug",
                "--base",
                "tiny",
                "--style",
                str(style_images["red"]),
                "--prompt",
                "x",
                "--blocks",
                "nope",
                "--out",
                str(tmp_path / "o.png"),
            ]
        )


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--content-prompt",
        "--blocks",
        "examples:",
        "up_blocks.0.attentions.1",
        "--style-weights",
    ):
        assert needle in text
