"""The controls from the CLI: flags into the request and the PNG metadata, presets listed, bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instantstyle.cli import main


@pytest.fixture
def run(tiny_paths, capsys):
    def _run(*args):
        argv = list(args)
        if argv[0] == "generate":
            argv += [
                "--base",
                str(tiny_paths["base"]),
                "--adapter",
                str(tiny_paths["adapter"]),
                "--image-encoder",
                str(tiny_paths["image_encoder"]),
                "--device",
                "cpu",
                "--quiet",
            ]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def test_blocks_lists_the_new_presets(run):
    code, out, _ = run("blocks", "--base", "tiny")
    assert code == 0
    assert "strong = every module, not down_blocks.2.attentions.1" in out
    assert (
        "precise = up_blocks.0.attentions.1, down_blocks.2.attentions.1 (uncond branch, x --layout-boost)"
        in out
    )
    assert "composition = down_blocks.2.attentions.1" in out
    code, out, _ = run("blocks", "--base", "tiny", "--json")
    presets = json.loads(out)["presets"]
    assert [e["branch"] for e in presets["precise"]] == ["cond", "uncond"]
    assert presets["strong"][1] == {"blocks": "down_blocks.2.attentions.1", "branch": "cond", "scale": 0.0}


def test_controls_reach_the_request_and_the_metadata(run, tmp_path, style_images, tiny_model):
    out = tmp_path / "p.png"
    red, blue, green = (str(style_images[k]) for k in ("red", "blue", "green"))
    flags = [
        "--mode",
        "precise",
        "--layout-boost",
        "1.5",
        "--composition",
        blue,
        "--composition-scale",
        "0.7",
        "--negative-style",
        green,
        "--negative-style-scale",
        "0.5",
        "--style-window",
        "0:0.75",
    ]
    code, _, err = run(
        "generate",
        "--style",
        red,
        "--prompt",
        "a cat",
        "--steps",
        "4",
        "--seed",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        *flags,
        "--out",
        str(out),
    )
    assert code == 0, err
    with Image.open(out) as im:
        meta = json.loads(im.info["instantstyle"])
        pixels = np.asarray(im.convert("RGB"))
    assert meta["mode"] == "precise" and meta["layout_boost"] == 1.5 and meta["style_window"] == [0.0, 0.75]
    assert meta["composition"] == blue and meta["composition_scale"] == 0.7
    assert meta["negative_style"] == green and meta["negative_style_scale"] == 0.5
    assert meta["active_blocks_uncond"] == ["down_blocks.2.attentions.1"]
    assert meta["active_blocks_composition"] == ["down_blocks.2.attentions.1"]
    assert len(meta["composition_sha256"]) == 1 and len(meta["negative_style_sha256"]) == 1
    api = tiny_model.generate(
        prompt="a cat",
        style=[red],
        steps=4,
        seed=2,
        width=64,
        height=64,
        mode="precise",
        layout_boost=1.5,
        composition=blue,
        composition_scale=0.7,
        negative_style=green,
        negative_style_scale=0.5,
        style_window=(0, 0.75),
    )[0]
    assert np.array_equal(np.asarray(api), pixels)  # the Python API, same request, same pixels


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--style-window", "0.5:1.5"],
            "--style-window: START and END must be fractions in [0, 1] (0.5:1.5)",
        ),
        (["--style-window=-0.1:0.5"], "must be fractions in [0, 1]"),
        (["--style-window", "0.6:0.4"], "START must be below END (0.6:0.4)"),
        (["--style-window", "0.5:0.5"], "START must be below END"),
        (["--style-window", "half"], "give START:END fractions"),
        (["--layout-boost", "2"], "--layout-boost is for presets with a negative-branch layout block"),
        (["--mode", "strong", "--layout-boost", "2"], "--mode strong has none"),
        (
            ["--mode", "full", "--composition", "COMP"],
            "--composition puts its image into the layout block, and --mode full puts the style there too",
        ),
        (
            ["--blocks", "style+layout", "--composition", "COMP"],
            "--composition takes down_blocks.2.attentions.1",
        ),
        (["--mode", "precise", "--guidance", "1"], "works through the unconditional branch"),
        (
            ["--negative-style", "COMP", "--guidance", "1"],
            "--negative-style replaces the unconditional branch",
        ),
        (["--composition-scale", "0.5"], "composition_scale needs a composition image"),
        (["--composition", "missing.png"], "composition image"),
    ],
)
def test_bad_controls_are_one_line_errors(run, tmp_path, style_images, flags, message):
    out = tmp_path / "x.png"
    flags = [
        str(style_images["blue"]) if f == "COMP" else str(tmp_path / f) if f == "missing.png" else f
        for f in flags
    ]
    code, stdout, err = run(
        "generate",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "1",
        *flags,
        "--out",
        str(out),
    )
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("instantstyle: error: ") and message in err, err
    assert not out.exists() and stdout == ""
