"""B-LoRA training/application and the compare command on the tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from instantstyle import blocks
from instantstyle.errors import InstantStyleError
from instantstyle.methods import b_lora
from instantstyle.testing.state import assert_same, snapshot
from instantstyle.training import b_lora as blora_training

TRAIN = dict(rank=4, lr=1e-3, resolution=8, progress=False)


@pytest.fixture(scope="session")
def blora_dir(tiny_model, style_images, tmp_path_factory):
    """A B-LoRA trained on the shared tiny model's own pipe (which must come back unchanged)."""
    out = tmp_path_factory.mktemp("blora") / "red"
    before = snapshot(tiny_model)
    result = blora_training.train(
        tiny_model.pipe, style_images["red"], out, steps=24, checkpoint_every=12, base_id="tiny", **TRAIN
    )
    assert_same(before, snapshot(tiny_model))
    return out, result


def test_training_lowers_the_loss_and_writes_weights_for_the_two_blocks_only(blora_dir, tiny_model):
    out, result = blora_dir
    assert result.eval_loss_after < result.eval_loss_before - 5e-4, (
        result.eval_loss_before,
        result.eval_loss_after,
    )
    weights = load_file(str(out / b_lora.WEIGHTS_FILE))
    modules = {m.name: m for m in tiny_model.modules}
    owners = {k.split(".transformer_blocks.")[0].removeprefix("unet.") for k in weights}
    assert owners == {blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK}
    layers = modules[blocks.BLORA_CONTENT_BLOCK].layers + modules[blocks.BLORA_STYLE_BLOCK].layers
    assert len(weights) == layers * 2 * 4 * 2  # layers x (attn1, attn2) x (q, k, v, out) x (A, B)
    assert {k.split(".attn")[1].split(".lora")[0] for k in weights} == {
        f"{a}.{p}" for a in ("1", "2") for p in b_lora.PROJECTIONS
    }
    assert all(w.shape[0] == 4 for k, w in weights.items() if "lora_A" in k)  # rank
    info = json.loads((out / b_lora.INFO_FILE).read_text())
    assert info["steps"] == 24 and info["base"] == "tiny" and info["architecture"] and info["weights"]
    assert (out / blora_training.CHECKPOINT_FILE).is_file()


@pytest.fixture
def one_thread():
    """Deterministic kernels for the duration of a test: with more than one thread, torch's CPU
    convolution backward sums in a varying order (two identical uninterrupted 4-step trainings
    differed by 5e-5 on 2 threads, as much as a resumed one), which Adam amplifies."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def test_resuming_from_a_checkpoint_continues_exactly(style_images, tiny_model, tmp_path, one_thread):
    blora_training.train(
        tiny_model.pipe, style_images["red"], tmp_path / "a", steps=2, checkpoint_every=2, **TRAIN
    )
    blora_training.train(
        tiny_model.pipe,
        style_images["red"],
        tmp_path / "a",
        steps=4,
        checkpoint_every=2,
        resume=True,
        **TRAIN,
    )
    blora_training.train(
        tiny_model.pipe, style_images["red"], tmp_path / "b", steps=4, checkpoint_every=2, **TRAIN
    )
    wa, wb = (load_file(str(tmp_path / d / b_lora.WEIGHTS_FILE)) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    with pytest.raises(InstantStyleError, match="not empty; pass --resume"):
        blora_training.train(tiny_model.pipe, style_images["red"], tmp_path / "a", steps=4, **TRAIN)
    with pytest.raises(InstantStyleError, match="different rank"):
        blora_training.train(
            tiny_model.pipe, style_images["red"], tmp_path / "a", steps=6, resume=True, **{**TRAIN, "rank": 8}
        )


def test_style_only_application_loads_only_the_style_block(blora_dir, tiny_model):
    from peft.tuners.lora import LoraLayer

    out, _ = blora_dir
    unet = tiny_model.pipe.unet
    info, style = b_lora.load_style(out, unet)
    assert style and all(k.startswith(blocks.BLORA_STYLE_BLOCK + ".") for k in style)
    before = snapshot(tiny_model)
    with b_lora.scoped_lora(
        unet, b_lora.lora_targets(unet, [info["style_block"]]), info["rank"], info["lora_alpha"], style
    ):
        lora_modules = [n for n, m in unet.named_modules() if isinstance(m, LoraLayer)]
        loaded = {
            n: m.lora_B["blora"].weight.detach().clone()
            for n, m in unet.named_modules()
            if isinstance(m, LoraLayer)
        }
    assert lora_modules and all(n.startswith(blocks.BLORA_STYLE_BLOCK + ".") for n in lora_modules)
    assert len(lora_modules) == len(style) // 2
    assert all(torch.equal(loaded[n], style[f"{n}.lora_B.weight"]) for n in loaded)  # the trained weights
    assert_same(before, snapshot(tiny_model))


def test_b_lora_generation_applies_the_style_and_restores_the_model(blora_dir, tiny_model, tmp_path):
    from safetensors.torch import save_file

    # The tiny LoRA trained for a few steps is small; amplify its update so the effect is visible.
    out = tmp_path / "strong"
    shutil.copytree(blora_dir[0], out)
    weights = load_file(str(out / b_lora.WEIGHTS_FILE))
    save_file(
        {k: v * 200 if "lora_B" in k else v for k, v in weights.items()}, str(out / b_lora.WEIGHTS_FILE)
    )
    before = snapshot(tiny_model)
    fast = dict(
        prompt="a cat", method="b-lora", b_lora=str(out), steps=1, width=64, height=64, seed=3, guidance=3.0
    )
    on = tiny_model.generate(**fast, b_lora_scale=1.0)[0]
    off = tiny_model.generate(**fast, b_lora_scale=0.0)[0]
    assert_same(before, snapshot(tiny_model))
    meta = json.loads(on.info["instantstyle"])
    assert meta["prompt_used"] == "a cat in [v] style" and meta["lora_block"] == blocks.BLORA_STYLE_BLOCK
    # The tiny model's images move little in one step; the UNet-level effect is checked below.
    assert not np.array_equal(np.asarray(on), np.asarray(off))


def test_style_lora_changes_the_unet_output_and_scale_zero_is_the_base(blora_dir, tiny_model):
    from instantstyle.inversion import sdxl_added_cond

    unet = tiny_model.pipe.unet
    info, style = b_lora.load_style(blora_dir[0], unet)
    style = {k: v * 200 if "lora_B" in k else v for k, v in style.items()}  # amplify the few-step LoRA
    pe, added = sdxl_added_cond(tiny_model.pipe, "a cat", None, 64, 64, 1.0)
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    call = dict(encoder_hidden_states=pe, added_cond_kwargs=added)
    with torch.no_grad():
        base = unet(x, 500, **call).sample
        with b_lora.scoped_lora(
            unet, b_lora.lora_targets(unet, [info["style_block"]]), info["rank"], info["lora_alpha"], style
        ):
            styled = unet(x, 500, **call).sample
            zero = unet(x, 500, **call, cross_attention_kwargs={"scale": 0.0}).sample
        after = unet(x, 500, **call).sample
    assert (styled - base).abs().max() > 1e-2
    assert torch.equal(zero, base) and torch.equal(after, base)


def test_a_lora_trained_on_another_base_is_refused(blora_dir, tiny_model, tmp_path, capsys):
    from instantstyle.cli import main

    out, _ = blora_dir
    for key in ("architecture", "weights"):
        other = tmp_path / key
        shutil.copytree(out, other)
        info = json.loads((other / b_lora.INFO_FILE).read_text())
        info[key] = "0123456789abcdef"
        (other / b_lora.INFO_FILE).write_text(json.dumps(info))
        with pytest.raises(InstantStyleError, match="trained on another base model"):
            tiny_model.generate(prompt="a", method="b-lora", b_lora=str(other), steps=1, width=64, height=64)
    rc = main(
        [
            "generate",
            "--base",
            "tiny",
            "--prompt",
            "a",
            "--method",
            "b-lora",
            "--b-lora",
            str(tmp_path / "architecture"),
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2 and "trained on another base model" in capsys.readouterr().err  # before loading models
    with pytest.raises(InstantStyleError, match="not a B-LoRA directory"):
        tiny_model.generate(prompt="a", method="b-lora", b_lora=str(tmp_path), steps=1)


def test_b_lora_refuses_a_style_image(blora_dir, tiny_model, style_images):
    with pytest.raises(InstantStyleError, match="takes its style from --b-lora"):
        tiny_model.generate(
            prompt="a", method="b-lora", b_lora=str(blora_dir[0]), style=[str(style_images["red"])]
        )


def test_cli_train_blora_on_tiny(style_images, tmp_path, capsys):
    from instantstyle.cli import main

    rc = main(
        [
            "train-blora",
            "--base",
            "tiny",
            "--image",
            str(style_images["red"]),
            "--out",
            str(tmp_path / "b"),
            "--steps",
            "2",
            "--rank",
            "2",
            "--resolution",
            "8",
            "--quiet",
        ]
    )
    assert rc == 0 and (tmp_path / "b" / b_lora.WEIGHTS_FILE).is_file()
    rc = main(
        ["train-blora", "--base", "tiny", "--image", str(style_images["red"]), "--out", str(tmp_path / "b")]
    )
    assert rc == 2 and "not empty" in capsys.readouterr().err


# ---------------------------------------------------------------------- compare


def test_compare_writes_a_labelled_grid_singles_and_reports(tiny_model, style_images, blora_dir, tmp_path):
    from instantstyle.compare import compare
    from instantstyle.images import read_metadata

    methods = ["instantstyle", "visual-style-prompting", "b-lora"]
    prompts = ["a cat", "a house by the sea"]
    settings = dict(
        steps=1,
        width=64,
        height=64,
        seed=5,
        guidance=3.0,
        reference_prompt="a red square",
        b_lora=str(blora_dir[0]),
    )
    result = compare(
        tiny_model,
        style_images["red"],
        prompts,
        tmp_path / "cmp",
        methods=methods,
        settings=settings,
        log=lambda _m: None,
    )
    out = tmp_path / "cmp"
    report = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in report["methods"]] == methods
    assert all(r["images"] == 2 and r["seconds_per_image"] > 0 for r in report["methods"])
    assert all(r["peak_memory_kind"] for r in report["methods"])
    md = (out / "report.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
    for m in methods:
        for j in range(2):
            meta = read_metadata(out / "singles" / f"{m}-{j}.png")
            assert meta["method"] == m and meta["prompt"] == prompts[j] and meta["seed"] == 5
    grid = Image.open(result.grid).convert("L")
    boxes = report["grid"]["label_boxes"]
    assert grid.height == boxes["column:instantstyle"][3] + 2 * 64
    for m in methods:  # every column has its own drawn label
        x0, y0, x1, y1 = boxes[f"column:{m}"]
        strip = np.asarray(grid.crop((x0 + 2, y0 + 2, x1 - 2, y1 - 2)))
        assert strip.min() < 100 and strip.max() > 200, m
    assert boxes["column:b-lora"][0] >= boxes["column:visual-style-prompting"][2]


def test_compare_cli_checks_methods_before_loading(style_images, tmp_path, capsys):
    from instantstyle.cli import main

    common = [
        "compare",
        "--base",
        str(tmp_path / "missing"),
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*common, "--methods", "instantstyle,bogus"]) == 2
    assert "valid methods" in capsys.readouterr().err
    assert main([*common, "--methods", "b-lora"]) == 2
    assert "needs --b-lora DIR" in capsys.readouterr().err
    assert main([*common, "--methods", "style-aligned"]) == 2
    assert "needs --reference-prompt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compare_without_a_reference_prompt_runs_the_rest_and_says_why(style_images, tmp_path, capsys):
    from instantstyle.cli import main

    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            "--style",
            str(style_images["red"]),
            "--prompt",
            "a lighthouse",
            "--base",
            "tiny",
            "--steps",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["ran"] == ["instantstyle", "ip-adapter"] == report["grid"]["columns"]
    assert set(report["not_run"]) == {"style-aligned", "visual-style-prompting"}
    assert all("needs --reference-prompt" in r for r in report["not_run"].values())
    md = (out / "report.md").read_text()
    assert "Not run:" in md and "- style-aligned: needs --reference-prompt" in md
    assert (out / "grid.png").is_file()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("needs --reference-prompt" in w for w in warnings)


def test_compare_derives_the_reference_prompt_from_the_content_prompt():
    from instantstyle.compare import build_requests, plan

    chosen = plan(
        ["instantstyle", "style-aligned", "visual-style-prompting"], {"content_prompt": "a harbour"}
    )
    assert (
        chosen.methods == ["instantstyle", "style-aligned", "visual-style-prompting"] and not chosen.skipped
    )
    assert "reference prompt taken from --content-prompt 'a harbour'" in chosen.notes[0]
    reqs = build_requests(
        chosen.methods, ["a cat"], "ref.png", {"content_prompt": "a harbour"}, chosen.overrides
    )
    assert reqs["style-aligned"][0].reference_prompt == "a harbour"
    assert reqs["instantstyle"][0].content_prompt == "a harbour"
    given = plan(["style-aligned"], {"reference_prompt": "a red square", "content_prompt": "x"})
    assert given.overrides == {} and not given.notes  # a given --reference-prompt wins
