"""A newcomer's first hour: downloads, the pre-flight, long prompts, --base tiny, A1111 metadata,
no lost work, messages, and the README's first screen on the shipped example image."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import download, models, preflight
from instantstyle.cli import main
from instantstyle.errors import InstantStyleError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "examples" / "ref.png"


@pytest.fixture
def cli(capsys):
    def _run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache (and the Hub reported unreachable rather than contacted)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def fake_cache(root: Path, repo_id: str, names) -> None:
    """Files (empty) laid out as huggingface_hub's cache: refs/main -> snapshots/<rev>/..."""
    rev = "0" * 40
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    for name in names:
        p = repo / "snapshots" / rev / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"{}")


# ---------------------------------------------------------------------- download


def test_dry_run_lists_each_feature_sets_files_offline(cli, empty_hub):
    code, out, _ = cli("download", "--dry-run")  # default: base + adapter; HF_HUB_OFFLINE=1 (conftest)
    assert code == 0
    files = [line.split()[-1] for line in out.splitlines() if line.startswith("  to fetch")]
    base = "stabilityai/stable-diffusion-xl-base-1.0/"
    assert files[:2] == [base + "model_index.json", base + "scheduler/scheduler_config.json"]
    assert base + "unet/diffusion_pytorch_model.fp16.safetensors" in files
    assert base + "unet/diffusion_pytorch_model.safetensors" not in files  # fp16 only
    assert not any("vae_1_0" in f or f.endswith(".bin") for f in files)
    assert files[-3:] == [
        "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors",
        "h94/IP-Adapter/sdxl_models/image_encoder/config.json",
        "h94/IP-Adapter/sdxl_models/image_encoder/model.safetensors",
    ]
    pieces = download.plan(["canny", "tile", "depth", "vit-h"])
    assert [p.repo_id for p in pieces] == [
        models.DEFAULT_CONTROLNET_CANNY,
        models.DEFAULT_CONTROLNET_TILE,
        "diffusers/controlnet-depth-sdxl-1.0",
        "h94/IP-Adapter",
    ]
    assert all(p.files == ("config.json", "diffusion_pytorch_model.safetensors") for p in pieces[:3])
    assert "models/image_encoder/model.safetensors" in pieces[3].files
    # What the cache holds is marked; a feature table row can be added by another module.
    fake_cache(empty_hub, "h94/IP-Adapter", ["sdxl_models/ip-adapter_sdxl.safetensors"])
    metrics = download.plan(["metrics"])
    assert [p.repo_id for p in metrics] == [
        "tomg-group-umd/CSD-ViT-L",
        "openai/clip-vit-large-patch14",
        "facebook/dinov2-base",
    ]
    assert download.feature_for_reference("tomg-group-umd/CSD-ViT-L/pytorch_model.bin") == "metrics"
    code, out, _ = cli("download", "adapter", "--dry-run")
    assert "cached    h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors" in out
    assert "to fetch  h94/IP-Adapter/sdxl_models/image_encoder/config.json" in out
    row = download.register_feature(
        download.Feature("test-metric", "a metric", (download.Piece("m", "me/m", ("a.bin",)),))
    )
    try:
        assert download.plan(["test-metric"]) == list(row.pieces)
    finally:
        del download.FEATURES["test-metric"]
    code, _, err = cli("download", "bse", "--dry-run")
    assert code == 2 and "did you mean 'base'" in err


def _hf_params(argv: list[str]) -> dict:
    """How the installed ``hf`` CLI parses ``argv`` (its own click parser; nothing is run)."""
    from huggingface_hub.cli.hf import app

    ctx = app.make_context("hf", list(argv), resilient_parsing=True)
    name, sub, rest = app.resolve_command(ctx, list(argv))
    return sub.make_context(name, rest, parent=ctx).params


def test_readme_download_section_uses_the_command_and_its_hf_lines_are_right():
    assert "instantstyle download\n" in README and "instantstyle download canny tile" in README
    docs = [README, *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]
    hf_lines = [
        line.strip() for text in docs for line in text.splitlines() if line.strip().startswith("hf download")
    ]
    assert len(hf_lines) >= 5, "the README and docs/evaluation.md show the equivalent hf lines"
    planned = {p.hf_command(): p for p in download.plan(list(download.FEATURES))}
    for line in hf_lines:  # each one is exactly a planned piece, and the installed hf reads it as file names
        piece = planned[line]
        params = _hf_params(shlex.split(line)[1:])
        assert params["repo_id"] == piece.repo_id and not params["include"], line
        assert list(params["filenames"]) == list(piece.files), line
    # The bug this replaces: several --include patterns after one flag become file names.
    assert _hf_params(["download", "x/y", "--include", "*.json", "*.txt"])["filenames"] == ("*.txt",)


# ---------------------------------------------------------------------- pre-flight


def test_offline_preflight_lists_every_missing_piece_fast_and_quietly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT="http://hub.invalid",
        PYTHONPATH=str(ROOT / "src"),
        INSTANTSTYLE_CACHE=str(tmp_path / "c"),
    )
    cmd = [
        sys.executable,
        "-m",
        "instantstyle",
        "generate",
        "--style",
        str(tmp_path / "missing.png"),
        "--content",
        str(EXAMPLE),
        "--control",
        "canny",
        "--prompt",
        "a cat",
        "--out",
        str(tmp_path / "o.png"),
    ]
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert res.returncode == 2 and seconds < 10, (seconds, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "instantstyle: error: 5 problems found before loading anything:"
    assert lines[1:6] == [
        f"  - style image '{tmp_path / 'missing.png'}' does not exist; check the path",
        "  - base model 'stabilityai/stable-diffusion-xl-base-1.0' is not in the Hugging Face cache",
        "  - IP-Adapter 'h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors' is not in the Hugging Face cache",
        "  - image encoder 'h94/IP-Adapter/sdxl_models/image_encoder' is not in the Hugging Face cache",
        "  - ControlNet 'diffusers/controlnet-canny-sdxl-1.0' is not in the Hugging Face cache",
    ]
    assert lines[6].startswith("fetch them with: instantstyle download base adapter canny (the Hub")
    assert "--base tiny" in lines[7] and len(lines) == 8
    assert "retry" not in res.stderr.lower() and res.stdout == ""


def test_preflight_resolves_cached_pieces_and_goes_offline_when_unreachable(empty_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    base = [f for p in download.plan(["base"]) for f in p.files]
    fake_cache(empty_hub, models.DEFAULT_BASE, base)
    fake_cache(empty_hub, "h94/IP-Adapter", download.IP_ADAPTER_SDXL.files)
    preflight.run(needs=preflight.needs_for_model(models.DEFAULT_BASE, None, None))  # all cached: passes
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"  # so no loader retries
    assert models.only_variant(models.parse_source(models.DEFAULT_BASE)) == "fp16"  # no --variant needed
    with pytest.raises(InstantStyleError, match="fetch it with: instantstyle download tile"):
        preflight.run(needs=preflight.needs_for_model(models.DEFAULT_BASE, None, None, controls=["tile"]))
    # A kind of model piece is declared as data (single files, LoRAs ... add theirs).
    preflight.register_kind("test-kind", lambda present: [("weights.bin",)])
    try:
        need = preflight.Need("thing", "me/thing", "test-kind")
        assert preflight.missing_files(need) == ["weights.bin"]
    finally:
        del preflight.KINDS["test-kind"]


def test_blocks_without_weights_fails_at_once(cli, empty_hub):
    start = time.perf_counter()
    code, _, err = cli("blocks")
    assert code == 2 and time.perf_counter() - start < 5
    assert (
        "fetch it with: instantstyle download base (HF_HUB_OFFLINE=1 is set" in err and "--base tiny" in err
    )


# ---------------------------------------------------------------------- long prompts


def test_a_prompt_over_77_tokens_warns_with_its_count_and_what_is_dropped(tiny_model, style_images):
    tok = tiny_model.pipe.tokenizer
    long = " ".join(f"w{i}" for i in range(200))
    n = len(tok(long, verbose=False).input_ids) - 2
    assert n > 100
    with pytest.warns(
        UserWarning, match=rf"prompt has {n} tokens; the text encoders read the first 75"
    ) as rec:
        tiny_model.generate(prompt=long, style=[str(style_images["red"])], steps=1, seed=0)
    lost = tok.decode(tok(long, verbose=False).input_ids[76:-1]).strip()
    assert f"'{lost[:60]}" in str(rec[0].message)
    from instantstyle.prompts import PromptTruncatedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], steps=1, seed=0)  # no warning


# ---------------------------------------------------------------------- --base tiny everywhere


def test_train_adapter_and_style_save_take_base_tiny(cli, tmp_path):
    from training.conftest import make_shapes

    data = make_shapes(tmp_path / "data", n=2)
    out = tmp_path / "run"
    code, stdout, err = cli(
        "train-adapter",
        "--base",
        "tiny",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--checkpoint-every",
        "0",
        "--quiet",
    )
    assert code == 0, err
    from instantstyle.testing.tiny import build_tiny

    pipe = build_tiny().pipe
    native = pipe.default_sample_size * pipe.vae_scale_factor
    assert json.loads((out / "train_config.json").read_text())["resolution"] == native  # the model's size
    assert Path(stdout.strip().splitlines()[-1]) == out / "adapter.safetensors"
    code, stdout, err = cli("style", "save", "sea", EXAMPLE, "--base", "tiny", "--device", "cpu")
    assert code == 0, err
    assert json.loads(cli("style", "show", "sea")[1])["encoder_id"] == "tiny"


# ---------------------------------------------------------------------- A1111 metadata


def _a1111_pairs(line: str) -> dict:
    """Key: value pairs of an A1111 settings line as A1111 defines them (values may be JSON strings)."""
    pairs = {}
    for m in re.finditer(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', line):
        value = m.group(2)
        pairs[m.group(1)] = json.loads(value) if value.startswith('"') else value
    return pairs


def test_a1111_chunk_of_an_img2img_batch_parses_with_sd_parsers(tiny_model, style_images):
    from sd_parsers import ParserManager

    from instantstyle.images import png_bytes

    content_prompt = "a dog, sitting: happy"
    images = tiny_model.generate(
        prompt="a cat, masterpiece",
        negative_prompt="blurry, lowres",
        style=[str(style_images["red"])],
        content=str(style_images["blue"]),
        strength=0.6,
        num_images=2,
        seed=7,
        steps=2,
        scheduler="euler-a",
        content_prompt=content_prompt,
    )
    parser = ParserManager()
    for i, image in enumerate(images):
        info = parser.parse(Image.open(io.BytesIO(png_bytes(image))))
        sampler = info.samplers[0]
        assert sampler.name == "Euler a"
        assert int(sampler.parameters["seed"]) == 7 + i
        assert float(info.metadata["Denoising strength"]) == 0.6
        assert [p.value for p in sampler.prompts] == ["a cat, masterpiece"]
        assert [p.value for p in sampler.negative_prompts] == ["blurry, lowres"]
        assert "sitting" not in info.metadata and sampler.model.name == Path(tiny_model.ids["base"]).name
        # A1111's own reading (quoted values unquoted) gives the exact content prompt back.
        pairs = _a1111_pairs(image.info["parameters"].splitlines()[-1])
        assert pairs["Content prompt"] == content_prompt and pairs["Seed"] == str(7 + i)
        assert set(pairs) >= {"Steps", "Sampler", "CFG scale", "Size", "Model", "IP-Adapter"}
        meta = json.loads(image.info["instantstyle"])  # the JSON chunk stays complete
        assert meta["seed"] == 7 and meta["image_seed"] == 7 + i and meta["content_prompt"] == content_prompt
        assert meta["strength"] == 0.6 and meta["speed"]["fp8"] is False
    # The per-image seed is honest: image 1 of the batch is the image of seed 8 made alone.
    alone = tiny_model.generate(
        prompt="a cat, masterpiece",
        negative_prompt="blurry, lowres",
        style=[str(style_images["red"])],
        content=str(style_images["blue"]),
        strength=0.6,
        seed=8,
        steps=2,
        scheduler="euler-a",
        content_prompt=content_prompt,
    )[0]
    a, b = (np.asarray(x, dtype=np.int16) for x in (alone, images[1]))
    assert np.abs(a - b).max() <= 2 < np.abs(np.asarray(images[0], dtype=np.int16) - b).max() / 10


def test_a1111_text_claims_only_what_was_used(tmp_path):
    from instantstyle.provenance import a1111_parameters, quote, short_hash

    common = dict(
        prompt="p",
        steps=3,
        scheduler="dpm++2m-karras",
        guidance=5.0,
        seed=1,
        width=64,
        height=64,
        adapter="h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors",
        num_images=1,
    )
    blora = _a1111_pairs(
        a1111_parameters(
            {
                **common,
                "method": "b-lora",
                "b_lora": str(tmp_path / "my-lora"),
                "base": str(tmp_path),
                "mode": "style",
            }
        ).splitlines()[-1]
    )
    assert "IP-Adapter" not in blora and "InstantStyle mode" not in blora and blora["B-LoRA"] == "my-lora"
    assert blora["Sampler"] == "DPM++ 2M" and blora["Schedule type"] == "Karras"
    assert blora["Model"] == tmp_path.name  # the name, not the local path
    fp8 = _a1111_pairs(
        a1111_parameters(
            {**common, "method": "instantstyle", "speed": {"fp8": True}, "memory": "lowest"}
        ).splitlines()[-1]
    )
    assert fp8["InstantStyle approximations"] == "fp8=True" and fp8["VAE tiling"] == "512 px"
    approx = _a1111_pairs(
        a1111_parameters(
            {
                **common,
                "method": "instantstyle",
                "approximations": {"fp8": "rowwise", "deepcache_interval": 3},
            }
        ).splitlines()[-1]
    )
    assert approx["InstantStyle approximations"] == "fp8=rowwise, deepcache_interval=3"
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    assert short_hash(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    text = a1111_parameters({**common, "method": "instantstyle", "base": str(ckpt)})
    assert f"Model hash: {short_hash(ckpt)}, Model: model," in text
    assert json.loads(quote('say "hi", a: b')) == 'say "hi", a: b' and "," not in quote("a, b")


# ---------------------------------------------------------------------- no lost work


def test_resume_latest_never_overwrites_a_finished_adapter(tiny_paths, tmp_path):
    from instantstyle.training.adapter_trainer import train_adapter
    from training.conftest import make_shapes

    data = make_shapes(tmp_path / "data", n=2)
    common = dict(base="tiny", data=str(data), resolution=32, batch_size=1, save_dtype="fp32")
    run = tmp_path / "run"
    train_adapter(out=str(run), max_steps=3, checkpoint_every=2, progress=False, **common)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-0000002",
        "checkpoint-0000003",
    ]
    before = (run / "adapter.safetensors").read_bytes()
    with pytest.raises(
        InstantStyleError, match=r"is finished \(step 3 of max_steps 3\); nothing was changed"
    ):
        train_adapter(
            out=str(run), max_steps=3, checkpoint_every=2, resume="latest", progress=False, **common
        )
    assert (run / "adapter.safetensors").read_bytes() == before
    plain = tmp_path / "plain"  # no checkpoints at all, only the adapter
    train_adapter(out=str(plain), max_steps=1, checkpoint_every=0, progress=False, **common)
    before = (plain / "adapter.safetensors").read_bytes()
    code = main(
        [
            "train-adapter",
            "--base",
            "tiny",
            "--data",
            str(data),
            "--out",
            str(plain),
            "--max-steps",
            "1",
            "--resolution",
            "32",
            "--resume",
            "latest",
            "--quiet",
        ]
    )
    assert code == 2 and (plain / "adapter.safetensors").read_bytes() == before
    assert stat.S_IMODE((plain / "adapter.safetensors").stat().st_mode) == 0o666 & ~_umask()


def test_out_that_is_an_input_is_refused_even_with_overwrite(cli, tmp_path):
    depth = tmp_path / "depth.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(depth)
    before = depth.read_bytes()
    code, _, err = cli(
        "generate",
        "--base",
        "tiny",
        "--style",
        EXAMPLE,
        "--content",
        EXAMPLE,
        "--control",
        "tiny",
        "--control-image",
        depth,
        "--prompt",
        "a house",
        "--out",
        depth,
        "--overwrite",
    )
    assert code == 2 and f"--out '{depth}' is also this run's --control-image" in err
    assert depth.read_bytes() == before
    readme_depth = next(line for line in README.splitlines() if "--control-image depth.png" in line)
    assert "--out depth.png" not in readme_depth


# ---------------------------------------------------------------------- messages


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_messages_name_the_real_problem(cli, tmp_path, tiny_model):
    from instantstyle.images import load_image, save_png

    with pytest.raises(InstantStyleError, match="is a directory; give an image file in it"):
        load_image(tmp_path, what="style image")
    with pytest.raises(InstantStyleError, match="is a URL; images are read from local files"):
        load_image("https://example.com/ref.png", what="style image")
    assert models.device_and_dtype("cpu", "float32")[1] is models.device_and_dtype("cpu", "fp32")[1]
    code, _, err = cli(
        "generate", "--style", "a.png", "--prompt", "x", "--out", "o.png", "--scheduler", "eulr"
    )
    assert code == 2 and err.count("\n") == 1 and "did you mean 'euler'?" in err and "usage:" not in err
    code, _, err = cli("generate", "--style", "a.png", "--prompt", "x")
    assert code == 2 and err.count("\n") == 1 and "required: --out" in err
    image = Image.new("RGB", (8, 8))
    path = save_png(image, tmp_path / "x.png")
    with pytest.raises(InstantStyleError, match=r"already exists; pass overwrite=True") as exc:
        save_png(image, path)
    assert "--overwrite" not in str(exc.value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # the user's umask, not 0600
    code, stdout, err = cli(
        "generate",
        "--base",
        "tiny",
        "--style",
        EXAMPLE,
        "--prompt",
        "x",
        "--steps",
        "1",
        "--seed",
        "3",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        f"{tmp_path}/new/dir/",
    )
    assert code == 0, err
    written = tmp_path / "new" / "dir" / "instantstyle-3-0.png"
    assert written.is_file() and stdout.strip() == str(written)
    cached = list(Path(os.environ["INSTANTSTYLE_CACHE"]).rglob("*.safetensors"))
    assert cached and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask() for p in cached)
    code, stdout, _ = cli(
        "compare",
        "--style",
        EXAMPLE,
        "--prompt",
        "x",
        "--methods",
        "style-aligned",
        "--base",
        "tiny",
        "--out",
        tmp_path / "cmp",
    )
    assert code == 2 and "--method style-aligned" not in _ and "style-aligned needs --reference-prompt" in _


def test_help_examples_keep_their_line_breaks():
    from instantstyle.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for line in (p.epilog or "").splitlines():
            assert len(line) <= 120, (name, line)  # a lost "\\" joins two command lines into one


# ---------------------------------------------------------------------- the README's first screen


def test_readme_first_screen_works_verbatim_with_the_example_image(tmp_path, monkeypatch, capsys):
    first = next(s for s in README.split("\n## ") if s.startswith("Set-up\n"))  # set-up by hand
    block = first.split("```bash\n")[2].split("```")[0]  # its second command block: the try-out
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("instantstyle ")]
    assert commands and all("--base tiny" in c and "examples/ref.png" in c for c in commands)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "ref.png").write_bytes(EXAMPLE.read_bytes())
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command.split("#")[0])[1:]
        assert main(argv) == 0, capsys.readouterr().err
    assert list(tmp_path.glob("*.png"))
    with Image.open(EXAMPLE) as im:
        assert im.size == (256, 256) and EXAMPLE.stat().st_size < 100_000
