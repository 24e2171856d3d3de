"""``instantstyle eval`` on the tiny model: a manifest end to end (and resumed), folders, compare dirs,
``compare --metrics``, bad input."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from instantstyle.cli import main
from instantstyle.errors import InstantStyleError
from instantstyle.metrics.runner import evaluate

METRICS = ("csd_style", "clip_t", "dino_leakage", "csd_content")


def _manifest(tmp_path, style_images, **extra):
    data = {
        "styles": [{"image": str(style_images["red"]), "content": "a red square"}],
        "prompts": ["a cat", "a house"],
        "seeds": [3],
        "defaults": {"steps": 2, "guidance": 5.0},
        "settings": [
            {"name": "instantstyle", "method": "instantstyle", "content_subtraction": True},
            {"method": "ip-adapter", "scale": 0.8},
        ],
        **extra,
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_manifest_runs_end_to_end_and_a_second_run_generates_nothing(
    tmp_path, style_images, tiny_model, tiny_scorer
):
    manifest = _manifest(tmp_path, style_images)
    loads = []

    def load_model():
        loads.append(1)
        return tiny_model

    out = tmp_path / "run"
    report = evaluate(manifest, out, tiny_scorer, load_model=load_model, progress=False, log=lambda m: None)
    assert report["counts"] == {"generated": 4, "reused": 0} and len(loads) == 1
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 4  # 2 methods x 2 prompts x 1 seed
    for name in (
        "report.json",
        "report.md",
        "summary.csv",
        "scores.csv",
        "style_vs_leakage.png",
        "style_vs_text.png",
        "best_worst.png",
        "manifest.resolved.json",
    ):
        assert (out / name).is_file(), name
    for plot in ("style_vs_leakage.png", "style_vs_text.png", "best_worst.png"):
        with Image.open(out / plot) as im:
            assert im.width > 300 and im.height > 200
    summary = {s["setting"]: s for s in report["summary"]}
    assert set(summary) == {"instantstyle", "ip-adapter"} and all(s["n"] == 2 for s in summary.values())
    for s in summary.values():
        for m in METRICS:
            assert s[m]["low"] <= s[m]["mean"] <= s[m]["high"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 4 and set(METRICS) <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "| `instantstyle` | 2 |" in md and "![style vs leakage](style_vs_leakage.png)" in md
    # the generated files carry the settings of the manifest
    meta = json.loads(Image.open(out / "images" / "ip-adapter" / pngs[0].name).info["instantstyle"])
    assert meta["scale"] == 0.8 and meta["seed"] == 3 and meta["steps"] == 2

    before = {p: p.stat().st_mtime_ns for p in pngs}
    again = evaluate(manifest, out, tiny_scorer, load_model=load_model, progress=False, log=lambda m: None)
    assert again["counts"] == {"generated": 0, "reused": 4} and len(loads) == 1  # no model even loaded
    assert {p: p.stat().st_mtime_ns for p in pngs} == before
    assert again["summary"] == report["summary"]  # same images, same scores

    # Changing a setting of the manifest never silently reuses a stale image.
    _manifest(tmp_path, style_images, defaults={"steps": 3, "guidance": 5.0})
    with pytest.raises(InstantStyleError, match="exists but was generated with a different steps"):
        evaluate(manifest, out, tiny_scorer, load_model=load_model, progress=False, log=lambda m: None)

    # The same images, scored as a folder through the CLI (parameters read from each PNG).
    code = main(
        [
            "eval",
            str(out / "images"),
            "--out",
            str(tmp_path / "folder-eval"),
            "--csd",
            "tiny",
            "--clip",
            "tiny",
            "--dino",
            "tiny",
            "--device",
            "cpu",
            "--quiet",
            "--metrics",
            "csd_style,clip_t",
        ]
    )
    assert code == 0
    folder = json.loads((tmp_path / "folder-eval" / "report.json").read_text())
    labels = {s["setting"] for s in folder["summary"]}
    assert labels == {"instantstyle content_scale=0.5", "ip-adapter scale=0.8"}
    by_file = {r["file"]: r["csd_style"] for r in folder["images"]}
    first = {r["file"]: r["csd_style"] for r in report["images"]}
    assert by_file == pytest.approx(first)
    assert not (tmp_path / "folder-eval" / "style_vs_leakage.png").exists()  # no leakage metric asked for


def test_compare_with_metrics_and_eval_of_the_compare_dir(tmp_path, style_images, tiny_paths, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--style",
            str(style_images["blue"]),
            "--prompt",
            "a cat",
            "--methods",
            "instantstyle,ip-adapter",
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            "--metrics",
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
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    for method in report["methods"]:
        assert set(METRICS) <= set(method["metrics"]) and len(method["scores"]) == 1
    assert "style similarity (CSD)" in (out / "report.md").read_text()
    assert any("style " in box for box in report["grid"]["label_boxes"])  # the scores label the grid
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(out),
                "--csd",
                "tiny",
                "--clip",
                "tiny",
                "--dino",
                "tiny",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    scored = json.loads((out / "eval" / "report.json").read_text())
    assert {s["setting"] for s in scored["summary"]} == {"instantstyle", "ip-adapter"}
    assert [r["csd_style"] for r in scored["images"]] == pytest.approx(
        [m["scores"][0]["csd_style"] for m in report["methods"]]
    )


def test_bad_input_is_one_line(tmp_path, style_images, capsys, tiny_scorer):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"styles": [{"image": "x.png", "colour": "red"}], "prompts": ["a"], "settings": [{}]})
    )
    assert main(["eval", str(bad), "--base", "tiny", "--quiet"]) == 2
    assert "manifest" in capsys.readouterr().err
    wrong = _manifest(tmp_path, style_images, settings=[{"method": "instantstyle", "mode": "sideways"}])
    with pytest.raises(InstantStyleError, match="manifest setting 'instantstyle': mode"):
        evaluate(wrong, tmp_path / "o", tiny_scorer, progress=False, log=lambda m: None)
    assert main(["eval", str(tmp_path / "nothing-here"), "--quiet"]) == 2
    assert "neither a folder" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "csd_stlye", "--quiet"]) == 2
    assert "did you mean 'csd_style'" in capsys.readouterr().err
    # a folder PNG whose style reference is nowhere to be found
    folder = tmp_path / "outs"
    folder.mkdir()
    from instantstyle.images import attach_metadata, save_png

    save_png(
        attach_metadata(
            Image.new("RGB", (64, 64)), {"prompt": "a", "style": ["gone.png"], "method": "ip-adapter"}
        ),
        folder / "a.png",
    )
    assert main(["eval", str(folder), "--csd", "tiny", "--clip", "tiny", "--dino", "tiny", "--quiet"]) == 2
    assert "pass --references DIR" in capsys.readouterr().err
