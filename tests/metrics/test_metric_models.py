"""Each metric model loads its published checkpoint layout strictly, computes what its authors' code
computes, and can fail: identical images score higher than unrelated ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instantstyle.errors import InstantStyleError, ModelNotFoundError
from instantstyle.metrics import csd
from instantstyle.metrics.scorer import Item
from instantstyle.testing.tiny_metrics import CSD_WIDTH, tiny_csd_state_dict, write_tiny_csd


def _openai_visual(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer forward written from its definition, on the checkpoint's own keys."""
    g = {k.removeprefix("module.backbone."): v for k, v in sd.items() if k.startswith("module.backbone.")}
    width, patch = g["conv1.weight"].shape[0], g["conv1.weight"].shape[-1]
    x = F.conv2d(pixels, g["conv1.weight"], stride=patch).flatten(2).transpose(1, 2)  # [N, T, W]
    x = torch.cat([g["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + g["positional_embedding"]
    x = F.layer_norm(x, (width,), g["ln_pre.weight"], g["ln_pre.bias"])
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in g:
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict(
            {
                "in_proj_weight": g[p + "attn.in_proj_weight"],
                "in_proj_bias": g[p + "attn.in_proj_bias"],
                "out_proj.weight": g[p + "attn.out_proj.weight"],
                "out_proj.bias": g[p + "attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (width,), g[p + "ln_1.weight"], g[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.linear(
            F.layer_norm(x, (width,), g[p + "ln_2.weight"], g[p + "ln_2.bias"]),
            g[p + "mlp.c_fc.weight"],
            g[p + "mlp.c_fc.bias"],
        )
        x = x + F.linear(
            h * torch.sigmoid(1.702 * h), g[p + "mlp.c_proj.weight"], g[p + "mlp.c_proj.bias"]
        )  # QuickGELU
        i += 1
    return F.layer_norm(x[:, 0], (width,), g["ln_post.weight"], g["ln_post.bias"])  # [N, W]


@torch.no_grad()
def test_csd_matches_the_openai_clip_forward_on_the_same_checkpoint():
    sd = tiny_csd_state_dict(seed=3)
    model = csd.build({k.removeprefix("module."): v for k, v in sd.items()})
    assert (
        model.backbone.config.num_attention_heads == CSD_WIDTH // 64 == 2
    )  # OpenAI's rule, multi-head split
    pixels = torch.randn(2, 3, 224, 224)
    feature = _openai_visual(sd, pixels, heads=2)
    style, content = model(pixels)
    assert torch.allclose(style, F.normalize(feature @ sd["module.last_layer_style"], dim=-1), atol=1e-5)
    assert torch.allclose(content, F.normalize(feature @ sd["module.last_layer_content"], dim=-1), atol=1e-5)
    assert (style - content).abs().max() > 0.1  # two different heads, visibly


def test_csd_checkpoint_layout_is_strict(tmp_path):
    good = write_tiny_csd(tmp_path / "good" / "pytorch_model.bin")
    model, processor = csd.load(str(good))  # the training-checkpoint pickle, read with weights_only=True
    assert isinstance(model, csd.CSD) and processor.crop_size["height"] == 224

    sd = tiny_csd_state_dict()
    missing = dict(sd)
    del missing["module.backbone.ln_post.bias"]
    with pytest.raises(InstantStyleError) as err:
        csd.load(str(write_tiny_csd(tmp_path / "missing.bin", missing)))
    assert "missing: backbone.ln_post.bias" in str(err.value) and "\n" not in str(err.value)

    renamed = dict(sd)
    renamed["module.last_layer_styles"] = renamed.pop("module.last_layer_style")
    with pytest.raises(InstantStyleError) as err:
        csd.load(str(write_tiny_csd(tmp_path / "renamed.bin", renamed)))
    msg = str(err.value)
    assert "missing: last_layer_style" in msg and "unexpected: last_layer_styles" in msg and "\n" not in msg

    wrong = dict(sd)
    wrong["module.backbone.ln_pre.weight"] = torch.ones(CSD_WIDTH + 1)
    with pytest.raises(InstantStyleError, match="wrong shape: backbone.ln_pre.weight"):
        csd.build({k.removeprefix("module."): v for k, v in wrong.items()})

    evil = tmp_path / "evil.bin"
    torch.save(
        {"model_state_dict": sd, "payload": Image.new("RGB", (1, 1))}, evil
    )  # a non-allow-listed class
    with pytest.raises(InstantStyleError, match="could not be read safely"):
        csd.read_checkpoint(evil)


def _rename_first_key(directory):
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    sd = load_file(str(path))
    key = sorted(sd)[-1]
    sd[key + "_renamed"] = sd.pop(key)
    save_file(sd, str(path), metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("kind", ["clip", "dino"])
def test_transformers_metric_models_load_strictly(kind, tiny_metric_paths, tmp_path):
    import shutil

    from instantstyle.metrics import clip_t, dino

    module = {"clip": clip_t, "dino": dino}[kind]
    assert module.load(str(tiny_metric_paths[kind]))[0] is not None
    broken = tmp_path / kind
    shutil.copytree(tiny_metric_paths[kind], broken)
    key = _rename_first_key(broken)
    with pytest.raises(InstantStyleError) as err:
        module.load(str(broken))
    msg = str(err.value)
    assert f"missing: {key}" in msg and "unexpected:" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "spec, command",
    [
        ("tomg-group-umd/CSD-ViT-L/pytorch_model.bin", "instantstyle download metrics"),
    ],
)
def test_missing_csd_names_the_download(spec, command):
    with pytest.raises(ModelNotFoundError) as err:
        csd.load(spec)
    assert command in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)


@pytest.mark.parametrize(
    "kind, spec", [("clip", "openai/clip-vit-large-patch14"), ("dino", "facebook/dinov2-base")]
)
def test_missing_transformers_model_names_the_download(kind, spec):
    from instantstyle.metrics import clip_t, dino

    with pytest.raises(ModelNotFoundError) as err:
        {"clip": clip_t, "dino": dino}[kind].load(spec)
    assert "instantstyle download metrics" in str(err.value)


def _pictures():
    rng = np.random.default_rng(0)
    red = Image.new("RGB", (96, 96), (220, 30, 30))
    noise = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    stripes = np.zeros((96, 96, 3), dtype=np.uint8)
    stripes[::8] = (30, 200, 40)
    return red, noise, Image.fromarray(stripes)


def test_identical_images_score_higher_than_unrelated_ones(tiny_scorer):
    red, noise, stripes = _pictures()
    same, other, third = tiny_scorer.score(
        [Item(red, "a cat", [red.copy()]), Item(noise, "a cat", [red]), Item(stripes, "a cat", [red])]
    )
    for metric in ("csd_style", "csd_content", "dino_leakage"):
        assert same[metric] == pytest.approx(1.0, abs=1e-5)
        assert same[metric] > other[metric] + 0.01 and same[metric] > third[metric] + 0.01, metric
    # CLIP-T compares with the prompt: the same image gets the same score whatever its reference
    again = tiny_scorer.score([Item(red, "a cat", [noise])])[0]
    assert again["clip_t"] == pytest.approx(same["clip_t"])
    assert again["csd_style"] < same["csd_style"]


def test_clip_t_ranks_the_prompt_on_hand_made_embeddings(tiny_scorer):
    """The image embedding's own text direction scores higher than an orthogonal one (scaling: cosine)."""
    from instantstyle.metrics.maths import cosine

    red = _pictures()[0]
    image = tiny_scorer._cache[("clip_image", tiny_scorer._embed_images([red])[0])]
    tiny_scorer._cache[("clip_text", "matching")] = image * 3.0
    ortho = torch.randn_like(image)
    tiny_scorer._cache[("clip_text", "orthogonal")] = ortho - (ortho @ image) / (image @ image) * image
    match, off = tiny_scorer.score([Item(red, "matching", []), Item(red, "orthogonal", [])])
    assert match["clip_t"] == pytest.approx(1.0, abs=1e-5) and off["clip_t"] == pytest.approx(0.0, abs=1e-5)
    assert float(cosine(image, image)) == pytest.approx(1.0)
