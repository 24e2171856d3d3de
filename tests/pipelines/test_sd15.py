"""The SD1.5 family: structure-based family detection, its preset tables, loading (diffusers directory,
single file, ``tiny-sd15``), equivalence with stock diffusers, content subtraction in the ViT-H space,
every task's SD1.5 pipeline, the server, and the family-mismatch errors.

Stock side: ``StableDiffusionPipeline.from_pretrained`` + ``load_ip_adapter`` (h94's ``models`` layout)
+ ``set_ip_adapter_scale(<InstantStyle dict>)``, loaded from the same tiny files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import blocks, models
from instantstyle.cli import main
from instantstyle.errors import InstantStyleError
from stock_diffusers import load_stock_sd15

TOL = 2 / 255
STEPS = 3
STYLE_DICT = {"up": {"block_1": [1.0, 1.0, 1.0]}}  # infer_style_sd15.py's target_blocks=["up_blocks.1"]

# runwayml/stable-diffusion-v1-5's unet/config.json (the keys that shape it), and SD2.1's differences.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD21_UNET = {**SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024}
SD21_UNET["use_linear_projection"] = True


@pytest.fixture(scope="module")
def sd15_model(tiny_paths):
    """InstantStyle on the tiny SD1.5 from disk (diffusers directory, h94 files, the ViT-H text tower)."""
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["sd15_base"]),
        str(tiny_paths["sd15_adapter"]),
        str(tiny_paths["sd15_image_encoder"]),
        content_text_encoder=str(tiny_paths["sd15_content_text"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
        speed="plain",
    )


@pytest.fixture(scope="module")
def stock(tiny_paths, sd15_model):
    """Stock SD1.5 with the sampler our requests default to (``euler``; SD1.5's own is PNDM)."""
    from diffusers import EulerDiscreteScheduler

    pipe = load_stock_sd15(tiny_paths, sd15_model.feature_extractor)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def stock_run(pipe, **kw):
    return pipe(
        prompt="a cat",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        **kw,
    ).images


def ours(model, **kw):
    params = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0) | kw
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in model.generate(**params)])


# ---------------------------------------------------------------------- structure and tables


def test_family_is_read_from_the_structure():
    from instantstyle.sources.tiny_sd15 import tiny_sd15_unet_config
    from instantstyle.testing.fullsize import SDXL_UNET_CONFIG

    assert blocks.family(models.meta_unet(SD15_UNET)) == "sd15"
    assert blocks.family(models.meta_unet(tiny_sd15_unet_config())) == "sd15"
    assert blocks.family(models.meta_unet(SDXL_UNET_CONFIG)) == "sdxl"
    assert blocks.family(models.meta_unet(models.load_unet_config("tiny"))) == "sdxl"
    # Not from a name: SD2.1 has SD1.5's block names and types, but linear projections.
    with pytest.raises(InstantStyleError, match="Stable Diffusion 2.x UNet"):
        blocks.family(models.meta_unet(SD21_UNET))


@pytest.mark.parametrize(
    "mode, active",
    [
        ("style", {"up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"}),
        ("layout", {"down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0"}),
        (
            "style+layout",  # infer_style_sd15.py: ["down_blocks.2", "mid_block", "up_blocks.1"]
            {
                "down_blocks.2.attentions.0",
                "down_blocks.2.attentions.1",
                "mid_block.attentions.0",
                "up_blocks.1.attentions.0",
                "up_blocks.1.attentions.1",
                "up_blocks.1.attentions.2",
            },
        ),
    ],
)
def test_sd15_presets_are_exact_processor_sets(mode, active):
    modules = blocks.discover(models.meta_unet(SD15_UNET))
    assert sum(len(m.processors) for m in modules) == 16  # ip-adapter_sd15 carries 16 layers
    scales = blocks.resolve(modules, blocks.preset_spec(mode), scale=0.5)
    want = {f"{m}.transformer_blocks.0.attn2.processor" for m in active}
    assert {p for p, s in scales.items() if s} == want and set(scales.values()) == {0.0, 0.5}
    strong = blocks.resolve(modules, blocks.preset_spec("strong"))
    layout = blocks.resolve(modules, blocks.preset_spec("layout"))
    assert {p for p, s in strong.items() if s} == {p for p, s in layout.items() if not s}
    precise = blocks.resolve_branches(modules, blocks.preset_spec("precise"), layout_boost=2.0)
    assert {p for p, s in precise["uncond"].items() if s} == {p for p, s in layout.items() if s}
    assert set(precise["uncond"].values()) == {0.0, 2.0}
    rows = {r["module"]: r["role"] for r in blocks.describe(modules)}
    assert {m for m, r in rows.items() if r == "style"} == {f"up_blocks.1.attentions.{i}" for i in range(3)}


def test_blocks_cli_marks_the_sd15_style_and_layout_blocks(capsys):
    assert main(["blocks", "--base", "tiny-sd15"]) == 0
    out = capsys.readouterr().out
    roles = {line.split()[0]: line.split()[-1] for line in out.splitlines() if ".attentions." in line}
    assert {m for m, r in roles.items() if r == "style"} == {f"up_blocks.1.attentions.{i}" for i in range(3)}
    assert {m for m, r in roles.items() if r == "layout"} == {
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
    }
    assert "style = up_blocks.1\n" in out and "layout = down_blocks.2 + mid_block" in out
    assert main(["blocks", "--base", "tiny-sd15", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["family"] == "sd15" and table["presets"]["style"][0]["blocks"] == "up_blocks.1"


# ---------------------------------------------------------------------- equivalence with stock diffusers


def test_style_preset_equals_stock_diffusers(stock, sd15_model, style_images):
    assert type(sd15_model.pipe).__name__ == "StableDiffusionPipeline" and sd15_model.family == "sd15"
    stock.set_ip_adapter_scale(STYLE_DICT)
    ref = stock_run(stock, ip_adapter_image=Image.open(style_images["red"]))
    mine = ours(sd15_model, style=[str(style_images["red"])], mode="style")
    assert np.abs(mine - ref).max() <= TOL
    # The check can fail: another style image, or another scale, moves the output far beyond the tolerance.
    other = ours(sd15_model, style=[str(style_images["blue"])], mode="style")
    assert np.abs(other - ref).max() > 10 * TOL
    weaker = ours(sd15_model, style=[str(style_images["red"])], mode="style", scale=0.3)
    assert np.abs(weaker - ref).max() > 10 * TOL


def test_content_subtraction_equals_stock_fed_the_subtracted_embeds(
    stock, sd15_model, style_images, tiny_paths
):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    stock.set_ip_adapter_scale(STYLE_DICT)
    text_dir = str(tiny_paths["sd15_content_text"])
    tower, tok = (
        CLIPTextModelWithProjection.from_pretrained(text_dir),
        CLIPTokenizer.from_pretrained(text_dir),
    )
    with torch.no_grad():
        image = Image.open(style_images["red"])
        img_emb = stock.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)[0].chunk(2)[1][
            0
        ]  # [1, D]
        text = tower(**tok(["a red square"], return_tensors="pt")).text_embeds  # [1, D] (infer_style_sd15.py)
    cond = (img_emb - 0.5 * text)[None]  # [1, 1, D]
    ref = stock_run(stock, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(cond), cond])])
    mine = ours(sd15_model, style=[str(style_images["red"])], mode="style", content_prompt="a red square")
    assert np.abs(mine - ref).max() <= TOL
    plain = ours(sd15_model, style=[str(style_images["red"])], mode="style")
    assert np.abs(plain - mine).max() > 10 * TOL  # subtraction visibly changes the picture


def test_tiny_sd15_loads_its_text_tower_on_first_subtraction_and_runs_every_task(style_images):
    from instantstyle import InstantStyle

    model = InstantStyle.from_pretrained(
        "tiny-sd15", device="cpu", dtype="fp32", cache_dir=None, progress=False
    )
    assert model.content_text is None and model.native_size == 64
    red = str(style_images["red"])
    image = model.generate(prompt="a cat", steps=2, seed=0, style=[red], content_prompt="a red square")[0]
    assert model.content_text is not None
    assert json.loads(image.info["instantstyle"])["content_text_encoder"] == "tiny-sd15"
    content = Image.new("RGB", (64, 64), (20, 200, 40))
    mask = Image.new("L", (64, 64), 255)
    runs = {
        "img2img": dict(content="<c>", content_image=content),
        "inpaint": dict(content="<c>", content_image=content, mask="<m>", mask_image=mask),
        "controlnet": dict(content="<c>", content_image=content, control=["canny"]),
    }
    for task, kw in runs.items():
        out = model.generate(prompt="a cat", steps=2, seed=0, style=[red], task=task, **kw)
        assert out[0].size == (64, 64), task
    assert {type(p).__name__ for p in model.pipelines()} == {
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "StableDiffusionControlNetPipeline",
    }


def test_single_file_sd15_round_trips_and_generates_the_same(sd15_model, tiny_paths, style_images):
    from instantstyle import InstantStyle

    single = InstantStyle.from_pretrained(
        str(tiny_paths["sd15_single_file"]),
        str(tiny_paths["sd15_adapter"]),
        str(tiny_paths["sd15_image_encoder"]),
        base_config=str(tiny_paths["sd15_single_file_config"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
        speed="plain",
    )
    assert type(single.pipe).__name__ == "StableDiffusionPipeline" and single.family == "sd15"
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(sd15_model.pipe, name).state_dict(), getattr(single.pipe, name).state_dict()
        assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want), name
    red = [str(style_images["red"])]
    assert np.abs(ours(single, style=red, steps=2) - ours(sd15_model, style=red, steps=2)).max() <= TOL


# ---------------------------------------------------------------------- bad input: one line, exit 2, no file


def _with_sdxl_vae_scaling(base: str, tmp_path) -> str:
    """A copy of the tiny SDXL whose VAE has SDXL's scaling factor, 0.13025 (the tiny one keeps
    diffusers' default, SD1.5's 0.18215), so the family check has a real pair to tell apart."""
    import shutil

    copy = tmp_path / "sdxl-vae-0.13025"
    shutil.copytree(base, copy)
    config = json.loads((copy / "vae" / "config.json").read_text())
    (copy / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.13025}))
    return str(copy)


def _cli(tmp_path, style_images, *flags):
    out = tmp_path / "out.png"
    argv = ["generate", "--prompt", "a cat", "--steps", "1", "--style", str(style_images["red"])]
    argv += ["--out", str(out), "--device", "cpu", "--quiet", *flags]
    return main(argv), out


@pytest.mark.parametrize(
    "case, expect",
    [
        ("sd15-adapter-on-sdxl", "was made for another model family than the SDXL base"),
        ("sdxl-adapter-on-sd15", "was made for another model family than the SD1.5 base"),
        ("sd15-vae-on-sdxl", "it is a VAE of another model family (SD1.5 0.18215, SDXL 0.13025)"),
        ("text-tower-of-another-space", "projects to 32-d but the image encoder's embeddings are 24-d"),
        ("plus-on-sd15", "task plus (InstantStyle-Plus"),
        ("style-aligned-on-sd15", "--method style-aligned is implemented for SDXL bases only"),
    ],
)
def test_family_mismatches_are_one_line_errors(tmp_path, tiny_paths, style_images, capsys, case, expect):
    p = {k: str(v) for k, v in tiny_paths.items()}
    sdxl = ["--base", p["base"], "--adapter", p["adapter"], "--image-encoder", p["image_encoder"]]
    sd15 = [
        "--base",
        p["sd15_base"],
        "--adapter",
        p["sd15_adapter"],
        "--image-encoder",
        p["sd15_image_encoder"],
    ]
    if case == "text-tower-of-another-space":  # SDXL's bigG-space tower next to a ViT-H encoder
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        CLIPTextModelWithProjection.from_pretrained(p["base"], subfolder="text_encoder_2").save_pretrained(
            tmp_path / "bigG"
        )
        CLIPTokenizer.from_pretrained(p["base"], subfolder="tokenizer_2").save_pretrained(tmp_path / "bigG")
    flags = {
        "sd15-adapter-on-sdxl": [
            *sdxl[:2],
            "--adapter",
            p["sd15_adapter"],
            "--image-encoder",
            p["sd15_image_encoder"],
        ],
        "sdxl-adapter-on-sd15": [*sd15[:2], "--adapter", p["adapter"], "--image-encoder", p["image_encoder"]],
        "sd15-vae-on-sdxl": [
            "--base",
            _with_sdxl_vae_scaling(p["base"], tmp_path),
            *sdxl[2:],
            "--vae",
            p["sd15_base"] + "/vae",
        ],
        "text-tower-of-another-space": [*sd15, "--content-text-encoder", str(tmp_path / "bigG")],
        "plus-on-sd15": ["--base", "tiny-sd15", "--task", "plus", "--content", str(style_images["blue"])],
        "style-aligned-on-sd15": [
            "--base",
            "tiny-sd15",
            "--method",
            "style-aligned",
            "--reference-prompt",
            "x",
        ],
    }[case]
    code, out = _cli(tmp_path, style_images, *flags)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("instantstyle: error: ") and expect in err, err
    assert not out.exists()


def test_unsupported_single_files_stay_one_line_errors(tmp_path, tiny_paths, style_images, capsys):
    """An SD1.5 single file is a base now; an SD2.x one is still refused, naming what it is."""
    from safetensors.torch import save_file

    sd2 = tmp_path / "sd2.safetensors"
    save_file(
        {
            "cond_stage_model.model.token_embedding.weight": torch.zeros(1),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        },
        sd2,
    )
    tiny_sdxl = ["--adapter", str(tiny_paths["adapter"]), "--image-encoder", str(tiny_paths["image_encoder"])]
    code, out = _cli(tmp_path, style_images, "--base", str(sd2), *tiny_sdxl)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a Stable Diffusion 2.x checkpoint" in err, err
    assert "SDXL or SD1.5 checkpoint" in err and not out.exists()


def test_missing_vit_h_text_tower_names_its_fetch_command(sd15_model, style_images):
    from instantstyle import InstantStyle

    model = InstantStyle(
        sd15_model.pipe,
        sd15_model.image_encoder,
        sd15_model.feature_extractor,
        sd15_model.adapter_info,
        ids=dict(sd15_model.ids),
        content_text_default=models.FAMILY_DEFAULTS["sd15"]["content_text_encoder"],
        speed="plain",
    )
    with pytest.raises(InstantStyleError, match="fetch it with: instantstyle download vit-h-text"):
        model.generate(prompt="a cat", steps=1, style=[str(style_images["red"])], content_prompt="a dog")


# ---------------------------------------------------------------------- the server and the UI


def test_serve_base_tiny_sd15_serves_a_generation_and_the_ui(style_images, monkeypatch):
    pytest.importorskip("fastapi")
    red_png = style_images["red"].read_bytes()
    import uvicorn
    from fastapi.testclient import TestClient

    seen = {}

    def fake_run(self, sockets=None):
        with TestClient(self.config.app, base_url=f"http://127.0.0.1:{self.config.port}") as c:
            key = {"X-API-Key": "k3y"}
            seen["blocks"] = c.get("/v1/blocks", headers=key).json()
            seen["ui"] = c.get("/ui/", headers=key).status_code
            r = c.post(
                "/v1/generate?wait=true",
                headers=key,
                data={"params": json.dumps({"prompt": "a cat", "seed": 1, "steps": 2})},
                files=[("images", ("red.png", red_png, "image/png"))],
            )
            seen["generate"] = (r.status_code, r.json())

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setenv("INSTANTSTYLE_API_KEY", "k3y")
    assert main(["serve", "--base", "tiny-sd15", "--device", "cpu", "--cpu-threads", "1"]) == 0
    assert (
        seen["blocks"]["family"] == "sd15"
        and seen["blocks"]["presets"]["style"][0]["blocks"] == "up_blocks.1"
    )
    assert seen["ui"] == 200
    status, body = seen["generate"]
    assert status == 200, body
    meta = body["images"][0]["metadata"]
    assert meta["base"] == "tiny-sd15" and meta["width"] == 64
    assert meta["active_blocks"] == [f"up_blocks.1.attentions.{i}" for i in range(3)]
