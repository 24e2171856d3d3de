"""The toolkit on the real models, for a user with an NVIDIA GPU and the weights (opt-in).

    instantstyle download                       # SDXL base (fp16) + h94 ip-adapter_sdxl + ViT-bigG
    INSTANTSTYLE_REAL_WEIGHTS=1 python -m pytest -q tests/real_weights    # or: -m real_weights

Skipped by default (nothing depends on it). With the weights it generates with SDXL base and h94
``ip-adapter_sdxl.safetensors`` at fp16 on CUDA, through our API with its defaults, and checks:

- the image equals stock diffusers' on the same weights and seed (``StableDiffusionXLPipeline`` +
  ``load_ip_adapter`` + ``set_ip_adapter_scale`` with InstantStyle's style-block dict), while
  another reference moves it far more than the tolerance (so the comparison can fail);
- the image is a picture, not noise: its share of power in the highest spatial frequencies is far
  below white noise's (``frequency_stats``, itself tested on known pictures by a CPU test).

The weights are looked up in the Hugging Face cache only (``HF_HUB_OFFLINE=1``); nothing is fetched.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from frequency_stats import MAX_PICTURE_SHARE, WHITE_NOISE_SHARE, high_frequency_share
from PIL import Image

pytestmark = pytest.mark.real_weights

BASE = "stabilityai/stable-diffusion-xl-base-1.0"
ADAPTER_REPO, ADAPTER_FOLDER, ADAPTER_FILE = "h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors"
STYLE_DICT = {"up": {"block_0": [0.0, 1.0, 0.0]}}  # InstantStyle's style block, up_blocks.0.attentions.1
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "ref.png"
PROMPT, SEED, STEPS, GUIDANCE = "a lighthouse on a cliff at dusk", 42, 20, 5.0
# Same weights, seed and kernels give the same image (the fast path's CUDA graphs replay the same
# kernels); a few levels of fp16 rounding noise are allowed at single pixels, none on average.
MAX_ABS, MEAN_ABS = 8 / 255, 1 / 255


def _opted_in(config) -> bool:
    return os.environ.get("INSTANTSTYLE_REAL_WEIGHTS") == "1" or "real_weights" in (
        config.getoption("markexpr") or ""
    )


def _missing_weights() -> str | None:
    """What the default download still lacks, from its dry run (reads the local cache only)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "instantstyle", "download", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["the dry run failed"])[-1]
    missing = [line.split()[-1] for line in out.stdout.splitlines() if line.strip().startswith("to fetch")]
    return f"{len(missing)} files, e.g. {missing[0]}" if missing else None


@pytest.fixture(scope="module", autouse=True)
def _real_weights_available(request):
    if not _opted_in(request.config):
        pytest.skip("real-weights check, opt-in: INSTANTSTYLE_REAL_WEIGHTS=1 or -m real_weights")
    if not torch.cuda.is_available():
        pytest.skip("the real-weights check runs SDXL in fp16 and needs a CUDA GPU")
    missing = _missing_weights()
    if missing:
        pytest.skip(
            f"SDXL / IP-Adapter weights not in the Hugging Face cache ({missing}); run: instantstyle download"
        )


def _other_reference() -> Image.Image:
    """A reference unlike examples/ref.png: warm diagonal stripes."""
    y, x = np.mgrid[0:256, 0:256]
    stripes = ((x + y) // 32) % 2  # [256, 256]
    return Image.fromarray(
        np.stack([200 + 40 * stripes, 60 + 120 * stripes, 20 + 0 * stripes], -1).astype(np.uint8)
    )


def _free_cuda():
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def ours():
    """Our two images (the example reference, another reference) and the feature extractor we used."""
    from instantstyle import InstantStyle

    model = InstantStyle.from_pretrained(device="cuda", dtype="fp16", cache_dir=False, progress=False)
    params = dict(prompt=PROMPT, mode="style", seed=SEED, steps=STEPS, guidance=GUIDANCE)
    image = model.generate(style=[str(REFERENCE)], **params)[0]
    other = model.generate(style_images=[_other_reference()], **params)[0]
    feature_extractor = model.feature_extractor
    del model
    _free_cuda()
    return {"image": image, "other": other, "feature_extractor": feature_extractor}


@pytest.fixture(scope="module")
def stock(ours):
    """Stock diffusers on the same files, through its own loaders, with our image preprocessing."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(BASE, torch_dtype=torch.float16, variant="fp16")
    pipe.load_ip_adapter(
        ADAPTER_REPO, subfolder=ADAPTER_FOLDER, weight_name=ADAPTER_FILE, image_encoder_folder="image_encoder"
    )
    pipe.feature_extractor = ours["feature_extractor"]
    pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.set_ip_adapter_scale(STYLE_DICT)
    image = pipe(
        prompt=PROMPT,
        ip_adapter_image=Image.open(REFERENCE).convert("RGB"),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    del pipe
    _free_cuda()
    return image


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    assert a.size == b.size, (a.size, b.size)
    return np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)) / 255


def test_equals_stock_diffusers_and_the_style_matters(ours, stock):
    same, other = _diff(ours["image"], stock), _diff(ours["other"], stock)
    print(
        f"ours vs stock: max {same.max() * 255:.1f}/255, mean {same.mean() * 255:.2f}/255; "
        f"another reference vs stock: mean {other.mean() * 255:.1f}/255"
    )
    assert same.max() <= MAX_ABS and same.mean() <= MEAN_ABS
    assert other.mean() > 10 * MEAN_ABS  # the reference visibly matters, far beyond the tolerance


def test_images_are_pictures_not_noise(ours, stock):
    for name, image in (("ours", ours["image"]), ("another reference", ours["other"]), ("stock", stock)):
        share = high_frequency_share(image)
        print(f"{name}: high-frequency share {share:.4f} (white noise {WHITE_NOISE_SHARE:.2f})")
        assert share < MAX_PICTURE_SHARE, (
            f"{name}'s image looks like noise (high-frequency share {share:.3f})"
        )
