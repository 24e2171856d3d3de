"""``probe-blocks`` on the tiny model: every probe run injects into exactly one unit (forward hooks on
every IP-Adapter projection), and the report, the table and the heatmap are written."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from instantstyle import adapter, blocks
from instantstyle.errors import InstantStyleError
from instantstyle.metrics.probe import BASELINE, probe_blocks, recommend


def _hooks(model):
    """Forward hooks on every to_k_ip projection: which cross-attention layers ran the image branch."""
    fired, handles = set(), []
    for name, proc in adapter.ip_processors(model.pipe.unet).items():
        layer = name.removesuffix(".attn2.processor")
        for linear in proc.to_k_ip:
            handles.append(linear.register_forward_hook(lambda *_a, layer=layer: fired.add(layer)))
    return fired, handles


@pytest.mark.parametrize("layers", [False, True])
def test_each_probe_run_activates_exactly_one_unit(layers, tiny_model, tiny_scorer, style_images, tmp_path):
    modules = blocks.discover(tiny_model.pipe.unet)
    fired, handles = _hooks(tiny_model)
    seen = []

    def on_run(unit, _req):
        seen.append((unit, set(fired)))
        fired.clear()

    try:
        result = probe_blocks(
            tiny_model,
            [style_images["red"]],
            ["a cat"],
            tiny_scorer,
            tmp_path / "probe",
            layers=layers,
            settings={"steps": 1},
            progress=False,
            on_run=on_run,
            log=lambda m: None,
        )
    finally:
        for h in handles:
            h.remove()
    units = [u for u, _ in seen]
    expected = (
        [m.layer_name(i) for m in modules for i in range(m.layers)] if layers else [m.name for m in modules]
    )
    assert units == [BASELINE, *expected]
    assert seen[0][1] == set()  # the baseline injects nowhere
    for unit, layers_fired in seen[1:]:
        owners = {layer for layer in layers_fired}
        if layers:
            assert owners == {unit}, unit
        else:  # every layer of that module, and nothing else
            module = next(m for m in modules if m.name == unit)
            assert owners == {module.layer_name(i) for i in range(module.layers)}, unit
    out = tmp_path / "probe"
    report = json.loads((out / "probe.json").read_text())
    assert [r["unit"] for r in report["rows"]] == units
    assert (out / "probe.md").is_file() and (out / "probe.csv").is_file()
    with Image.open(out / "heatmap.png") as im:
        assert im.width > 200 and im.height > 100
    assert len(list((out / "images").glob("*.png"))) == len(units)
    assert set(result.recommended) == {"style", "layout", "style+layout"}
    style_unit = result.recommended["style"].removesuffix("=1.0")
    tiny_model.resolve_scales(
        tiny_model.request(prompt="x", blocks=result.recommended["style+layout"])
    )  # pasteable
    assert style_unit in units and f"--blocks {result.recommended['style']}" in (out / "probe.md").read_text()
    if not layers:
        with pytest.raises(InstantStyleError, match="already exists"):
            probe_blocks(tiny_model, [style_images["red"]], ["a cat"], tiny_scorer, out, progress=False)


def test_recommendation_rule():
    rows = [
        {"unit": BASELINE, "d_csd_style": 0.0, "d_dino_leakage": 0.0},
        {"unit": "a", "d_csd_style": 0.30, "d_dino_leakage": 0.25},  # strong style, but leaks
        {"unit": "b", "d_csd_style": 0.20, "d_dino_leakage": 0.02},  # style without leakage
        {"unit": "c", "d_csd_style": 0.05, "d_dino_leakage": 0.10},
    ]
    assert recommend(rows) == {"style": "b=1.0", "layout": "a=1.0", "style+layout": "b=1.0,a=1.0"}


def test_cli_probe_blocks_and_eval_load_the_model_from_the_generate_flags(
    tiny_paths, style_images, tmp_path, capsys
):
    """Both commands load the base through the same flags as generate (a written tiny model here)."""
    from instantstyle.cli import main

    model_flags = [
        "--base",
        str(tiny_paths["base"]),
        "--adapter",
        str(tiny_paths["adapter"]),
        "--image-encoder",
        str(tiny_paths["image_encoder"]),
        "--device",
        "cpu",
        "--quiet",
        "--csd",
        "tiny",
        "--clip",
        "tiny",
        "--dino",
        "tiny",
    ]
    code = main(
        [
            "probe-blocks",
            "--style",
            str(style_images["red"]),
            "--prompt",
            "a cat",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "probe"),
            "--metrics",
            "csd_style,dino_leakage",
            *model_flags,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        out.startswith("style: --blocks ")
        and "layout: --blocks " in out
        and (tmp_path / "probe" / "heatmap.png").is_file()
    )
    manifest = tmp_path / "one.json"
    manifest.write_text(
        json.dumps(
            {
                "styles": [{"image": str(style_images["red"])}],
                "prompts": ["a cat"],
                "defaults": {"steps": 1},
                "settings": [{"method": "instantstyle"}],
            }
        )
    )
    assert main(["eval", str(manifest), "--metrics", "csd_style", *model_flags]) == 0
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert report["counts"] == {"generated": 1, "reused": 0}
