"""Where models come from: the Hugging Face cache (offline), local dirs, and clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instantstyle import models
from instantstyle.download import fetch_command
from instantstyle.errors import InstantStyleError, ModelNotFoundError

REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out exactly as huggingface_hub's cache does (refs/main -> snapshots/<rev>/...)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    for rel, src in files.items():
        dst = repo / "snapshots" / REV / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)


def _tree(base: Path, prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{p.relative_to(base)}": p for p in base.rglob("*") if p.is_file()}


def test_parse_source():
    assert models.parse_source("tiny").is_tiny
    s = models.parse_source("h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors")
    assert (s.repo_id, s.subpath) == ("h94/IP-Adapter", "sdxl_models/ip-adapter_sdxl.safetensors")
    assert fetch_command(s) == "instantstyle download adapter"  # a default model: its download feature
    assert (
        fetch_command(models.parse_source("me/x/a.safetensors")) == "instantstyle download me/x/a.safetensors"
    )
    assert models.parse_source("./models/sdxl").local == Path("models/sdxl")
    with pytest.raises(InstantStyleError, match="neither an existing path nor a Hub id"):
        models.parse_source("sdxl")


def test_generate_from_the_hub_cache_offline(tmp_path, tiny_paths, style_images):
    """The default Hub references resolve from huggingface_hub's cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "stabilityai/stable-diffusion-xl-base-1.0", _tree(tiny_paths["base"]))
    ip = tiny_paths["adapter"].parent
    fake_hub_cache(cache, "h94/IP-Adapter", _tree(ip, "sdxl_models/"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": "src"}
    out = tmp_path / "o.png"
    cmd = [
        sys.executable,
        "-m",
        "instantstyle",
        "generate",
        "--style",
        str(style_images["red"]),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]  # default --base/--adapter/--image-encoder
    res = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parents[1]
    )
    assert res.returncode == 0, res.stderr
    assert out.is_file()
    # Remove the adapter from the cache: one line naming it and the command that fetches it.
    shutil.rmtree(cache / "models--h94--IP-Adapter")
    res = subprocess.run(
        cmd[:-1] + [str(tmp_path / "p.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()  # the pre-flight: one line per missing piece, then the fix
    assert [x for x in lines if "is not in the Hugging Face cache" in x] == [
        "  - IP-Adapter 'h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors' is not in the Hugging Face cache",
        "  - image encoder 'h94/IP-Adapter/sdxl_models/image_encoder' is not in the Hugging Face cache",
    ]
    assert "fetch them with: instantstyle download adapter (HF_HUB_OFFLINE=1 is set" in res.stderr


def test_missing_base_names_the_fetch_command(tiny_paths):
    from instantstyle import InstantStyle

    with pytest.raises(ModelNotFoundError, match="fetch it with: instantstyle download base"):
        InstantStyle.from_pretrained(
            models.DEFAULT_BASE,
            str(tiny_paths["adapter"]),
            str(tiny_paths["image_encoder"]),
            device="cpu",
            cache_dir=None,
        )


def test_missing_local_paths(tmp_path, tiny_paths):
    from instantstyle import InstantStyle

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        InstantStyle.from_pretrained(
            str(tiny_paths["base"]), str(tmp_path / "nope.safetensors"), "tiny", device="cpu"
        )
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        InstantStyle.from_pretrained(str(tmp_path), "tiny", "tiny", device="cpu")


def test_default_device_and_dtype():
    dev, dt = models.device_and_dtype(None, None)
    import torch

    if torch.cuda.is_available():
        assert (dev.type, dt) == ("cuda", torch.float16)
    else:
        assert dev.type in ("cpu", "mps")
    assert models.device_and_dtype("cpu", None)[1] == torch.float32
    with pytest.raises(InstantStyleError, match="not one of fp16, bf16, fp32"):
        models.device_and_dtype("cpu", "fp8")


def test_import_is_light():
    """`import instantstyle` imports no torch, no web framework, and probes no device."""
    code = "import sys, instantstyle; print(sorted(m for m in ('torch','diffusers','fastapi','gradio') if m in sys.modules))"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": "src"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
