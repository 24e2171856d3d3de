"""User LoRAs (``--lora PATH[:SCALE]``): equal to stock diffusers' ``load_lora_weights`` +
``set_adapters``, scoped to one request, cached, composed with B-LoRA, refused when they do not fit.

The tiny LoRAs (``sources/tiny_lora``, written by ``make-tiny``) are random but strong: at 0.7 they
move the tiny model's output far beyond the 2/255 tolerance, so each equality could fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stock_diffusers import load_stock_sdxl

TOL = 2 / 255
STEPS = 2
STYLE_DICT = {"up": {"block_0": [0.0, 1.0, 0.0]}}  # the style preset as set_ip_adapter_scale takes it


@pytest.fixture(scope="module")
def lora_model(tiny_paths):
    """A model of its own (LoRAs stay cached on it), loaded from the tiny files as ``tiny_model``."""
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["base"]),
        str(tiny_paths["adapter"]),
        str(tiny_paths["image_encoder"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
    )


@pytest.fixture(scope="module")
def stock(tiny_paths, lora_model):
    pipe = load_stock_sdxl(tiny_paths, lora_model.feature_extractor)
    pipe.load_lora_weights(str(tiny_paths["lora_kohya"]), adapter_name="kohya")
    pipe.load_lora_weights(str(tiny_paths["lora_diffusers"]), adapter_name="diffusers")
    pipe.set_ip_adapter_scale(STYLE_DICT)
    return pipe


def ours(model, images: list | None = None, **kw) -> np.ndarray:
    params = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0) | kw
    out = model.generate(**params)
    if images is not None:
        images.extend(out)
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in out])


def stock_run(pipe, **kw) -> np.ndarray:
    gen = torch.Generator("cpu").manual_seed(0)
    return pipe(
        prompt="a cat", num_inference_steps=STEPS, guidance_scale=5.0, generator=gen, output_type="np", **kw
    ).images


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_a_lora_at_0_7_equals_stock_diffusers(lora_model, stock, tiny_paths, style_images, layout):
    path = tiny_paths[f"lora_{layout}"]
    red = str(style_images["red"])
    stock.set_adapters([layout], [0.7])
    ref = stock_run(stock, ip_adapter_image=Image.open(red))
    images: list = []
    mine = ours(lora_model, images, style=[red], loras=[f"{path}:0.7"])
    assert np.abs(mine - ref).max() <= TOL
    # Every output records the LoRA it used: id, content hash, scale.
    files = json.loads(images[0].info["instantstyle"])["lora_files"]
    assert files == [
        {"id": str(path.resolve()), "sha256": lora_model.loras.file(str(path)).sha256, "scale": 0.7}
    ]
    if layout == "kohya":  # The check can fail: another scale moves the output far beyond the tolerance.
        weaker = ours(lora_model, style=[red], loras=[f"{path}:0.3"])
        assert np.abs(mine - weaker).max() > 10 * TOL


def test_a_lora_does_not_leak_into_the_next_request(lora_model, tiny_model, tiny_paths, style_images):
    red = str(style_images["red"])
    fresh = ours(tiny_model, style=[red])  # a model that never saw a LoRA
    with_lora = ours(lora_model, style=[red], loras=[str(tiny_paths["lora_kohya"])])
    assert np.abs(with_lora - fresh).max() > 10 * TOL  # the LoRA matters...
    assert np.array_equal(ours(lora_model, style=[red]), fresh)  # ...and is gone in the next request

    def fail(*_):
        raise RuntimeError("stopped in the first step")

    with pytest.raises(RuntimeError, match="stopped"):  # an error mid-call switches it off too
        lora_model.generate(
            prompt="a cat", style=[red], loras=[str(tiny_paths["lora_diffusers"])], on_step=fail
        )
    images: list = []
    assert np.array_equal(ours(lora_model, images, style=[red]), fresh)
    assert "lora_files" not in json.loads(images[0].info["instantstyle"])


def test_a_cached_lora_is_not_loaded_again_and_the_cache_is_bounded(lora_model, tiny_paths, style_images):
    loras, red = lora_model.loras, str(style_images["red"])
    kohya, diffusers = str(tiny_paths["lora_kohya"]), str(tiny_paths["lora_diffusers"])
    lora_model.generate(prompt="a", style=[red], steps=1, loras=[f"{kohya}:0.5"])
    loads = loras.loads
    lora_model.generate(prompt="a", style=[red], steps=1, loras=[f"{kohya}:0.9"])
    assert loras.loads == loads  # same file, another scale: no reload
    loras.max_loaded = 1
    try:
        lora_model.generate(prompt="a", style=[red], steps=1, loras=[diffusers])
        adapters = set(lora_model.pipe.unet.peft_config)
        assert list(loras.loaded) == [loras.file(diffusers).adapter] and adapters == set(loras.loaded)
    finally:
        loras.max_loaded = 8


def _write_blora(directory, unet, seed=5):
    """A hand-made B-LoRA for ``unet`` (the files ``train-blora`` writes), lora_alpha = rank (scaling 1)."""
    from safetensors.torch import save_file

    from instantstyle import blocks
    from instantstyle.methods import b_lora

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for target in b_lora.lora_targets(unet, [blocks.BLORA_STYLE_BLOCK]):
        layer = unet.get_submodule(target)
        layer = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
        weights[f"unet.{target}.lora_A.weight"] = torch.randn(4, layer.in_features, generator=gen) * 0.3
        weights[f"unet.{target}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=gen) * 0.5
    directory.mkdir()
    save_file(weights, directory / b_lora.WEIGHTS_FILE)
    info = {
        "architecture": b_lora.architecture_fingerprint(unet.config),
        "weights": b_lora.weights_fingerprint(unet),
        "style_block": blocks.BLORA_STYLE_BLOCK,
        "rank": 4,
        "lora_alpha": 4,
        "trigger": "[v]",
        "base": "tiny",
    }
    (directory / b_lora.INFO_FILE).write_text(json.dumps(info))
    return directory


def test_a_user_lora_composes_with_b_lora(lora_model, tiny_paths, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from instantstyle.methods import b_lora

    blora = _write_blora(tmp_path / "blora", lora_model.pipe.unet)
    kohya = str(tiny_paths["lora_kohya"])
    call = dict(prompt="a cat", method="b-lora", b_lora=str(blora), steps=STEPS, guidance=5.0, seed=0)
    both = ours(lora_model, **call, loras=[f"{kohya}:0.7"])
    # Stock diffusers: the user LoRA and the B-LoRA's style weights as two adapters, trigger in the prompt.
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths["base"]))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(kohya, adapter_name="user")
    pipe.load_lora_weights(str(blora / b_lora.WEIGHTS_FILE), adapter_name="blora")
    pipe.set_adapters(["user", "blora"], [0.7, 1.0])
    gen = torch.Generator("cpu").manual_seed(0)
    ref = pipe(
        prompt="a cat in [v] style",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=gen,
        output_type="np",
    ).images
    assert np.abs(both - ref).max() <= TOL
    # Each of the two matters: without the user LoRA, or at B-LoRA scale 0, the picture moves.
    assert np.abs(both - ours(lora_model, **call)).max() > 10 * TOL
    assert np.abs(both - ours(lora_model, **call, loras=[f"{kohya}:0.7"], b_lora_scale=0.0)).max() > 10 * TOL
    assert not any("blora" in set(getattr(lora_model.pipe.unet, "peft_config", {})) for _ in [0])


def _cli(tiny_paths, style_images, out, *extra):
    from instantstyle.cli import main

    args = ["generate", "--base", "tiny", "--prompt", "a cat", "--steps", "1", "--style"]
    args += [str(style_images["red"]), "--out", str(out), "--device", "cpu", "--quiet", *extra]
    return main(args)


@pytest.mark.parametrize(
    "case, expect",
    [
        (
            "sd15",
            "is a LoRA for a model with one text encoder (Stable Diffusion 1.x/2.x), not for this SDXL base",
        ),
        ("missing", "LoRA '{missing}' does not exist; check the path"),
        ("scale", "SCALE 'strong' is not a number; give PATH[:SCALE]"),
        ("checkpoint", "is an SDXL checkpoint, not a LoRA; a checkpoint goes to --base"),
        ("adapter", "is an IP-Adapter, not a LoRA; pass it with --adapter"),
    ],
)
def test_bad_loras_are_one_line_errors_with_no_output(
    tiny_paths, style_images, tmp_path, capsys, case, expect
):
    missing = tmp_path / "nope.safetensors"
    lora = {
        "sd15": str(tiny_paths["lora_sd15"]),
        "missing": str(missing),
        "scale": f"{tiny_paths['lora_kohya']}:strong",
        "checkpoint": str(tiny_paths["single_file"]),
        "adapter": str(tiny_paths["adapter"]),
    }[case]
    out = tmp_path / "out.png"
    code = _cli(tiny_paths, style_images, out, "--lora", lora)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("instantstyle: error: ")
    assert expect.format(missing=missing) in err, err
    assert not out.exists()


def test_the_server_offers_loras_by_name_only(lora_model, tiny_model, tiny_paths, style_images):
    pytest.importorskip("fastapi", reason="the server tests need the 'serve' extra (fastapi)")
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app
    from instantstyle.server.service import GenerationService

    red = [("images", ("red.png", style_images["red"].read_bytes(), "image/png"))]

    def post(client, **params):
        data = {"params": json.dumps({"prompt": "a cat", "steps": 1, "seed": 0, **params})}
        return client.post("/v1/generate?wait=true", data=data, files=red)

    from instantstyle.server.limits import Limits
    from instantstyle.server.ui_form import field_widgets

    for names, shown in ((["detail"], True), ([], False)):  # the UI: a multi-select of the names, or none
        kind, kw = field_widgets(Limits(), control_choices=[], methods=[], lora_names=names)["loras"]
        assert kind == "dropdown" and kw["multiselect"] and kw["choices"] == names and kw["visible"] is shown
    offered = {"detail": str(tiny_paths["lora_kohya"])}
    with (
        GenerationService(lora_model, queue_size=2, cpu_threads=1, loras=offered) as svc,
        TestClient(create_app(svc, ui=False), base_url="http://127.0.0.1") as client,
    ):
        ok = post(client, loras=["detail:0.7"])
        assert ok.status_code == 200, ok.text
        params = ok.json()["images"][0]["metadata"]
        assert params["lora_files"][0]["id"] == "detail" and str(tiny_paths["lora_kohya"]) not in json.dumps(
            params
        )
        assert client.get("/v1/health").json()["loras"] == ["detail"]
        for bad in (str(tiny_paths["lora_kohya"]), "../detail", "owner/repo/x.safetensors", "other:0.5"):
            r = post(client, loras=[bad])
            err = r.json()["error"]
            assert r.status_code == 400 and set(err) == {"status", "code", "message"}
            assert "never a path or Hub id" in err["message"] and str(tiny_paths["base"].parent) not in r.text
    with (
        GenerationService(tiny_model, queue_size=2, cpu_threads=1) as svc,
        TestClient(create_app(svc, ui=False), base_url="http://127.0.0.1") as client,
    ):
        r = post(client, loras=["detail"])
        assert r.status_code == 400 and "serve --lora-dir DIR" in r.json()["error"]["message"]


class _EagerCapture:
    """A capturer that keys graphs as the CUDA one does but replays by running the function again
    (no tracing: fast); ``GraphCache.captures`` then counts the distinct keys a call sequence made."""

    def __call__(self, fn, device):
        from torch.utils import _pytree as pytree

        out = fn()

        def replay():
            for old, new in zip(pytree.tree_leaves(out), pytree.tree_leaves(fn()), strict=True):
                if isinstance(old, torch.Tensor):
                    old.copy_(new)

        return replay, out


def test_cuda_graphs_key_on_the_active_loras_and_their_scales(lora_model, tiny_paths, style_images):
    """A graph captured with one LoRA set or scale is never replayed for another: the key names the
    LoRA layers' active adapters, scalings and on/off state (``loras.graph_key``)."""
    from instantstyle import fast as fast_path
    from instantstyle.fast import unet_graphs
    from instantstyle.loras import graph_key

    red, kohya, unet = str(style_images["red"]), str(tiny_paths["lora_kohya"]), lora_model.pipe.unet
    calls = [[f"{kohya}:0.7"], [f"{kohya}:0.3"], [], [f"{kohya}:0.7"]]
    keys = []
    for call in calls:
        with lora_model.loras.scope(call):
            keys.append(graph_key(unet))
    assert len(set(keys)) == 3 and keys[0] == keys[3] and keys[2] == graph_key(unet)
    saved = lora_model.speed
    cache = unet_graphs.graph_cache(unet, _EagerCapture())
    lora_model.speed = fast_path.FastOptions(cuda_graphs=True, fuse_qkv=True)
    try:
        for call in calls:
            lora_model.generate(prompt="a cat", style=[red], steps=1, seed=0, guidance=5.0, loras=call)
        assert cache.captures == 3 and cache.replays > cache.captures  # the fourth call replayed the first's
    finally:
        lora_model.speed = saved
        unet_graphs.release_graphs(unet)


def test_an_sd15_lora_on_an_sd15_base_equals_stock_diffusers(tiny_paths, style_images, tmp_path):
    """The same loader and checks on SD1.5 (kohya's SD1.x layout: diffusers' module names, ``lora_te_``)."""
    from safetensors.torch import save_file

    from instantstyle import InstantStyle
    from instantstyle.sources.tiny_lora import kohya_lora
    from stock_diffusers import load_stock_sd15

    model = InstantStyle.from_pretrained(
        str(tiny_paths["sd15_base"]),
        str(tiny_paths["sd15_adapter"]),
        str(tiny_paths["sd15_image_encoder"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
    )
    path = tmp_path / "sd15-lora.safetensors"
    save_file({k: v.contiguous() for k, v in kohya_lora(model.pipe).items()}, path)  # before any LoRA loads
    red = str(style_images["red"])
    from diffusers import EulerDiscreteScheduler

    stock = load_stock_sd15(tiny_paths, model.feature_extractor)
    stock.scheduler = EulerDiscreteScheduler.from_config(
        stock.scheduler.config
    )  # ours: euler (SD1.5's: PNDM)
    stock.load_lora_weights(str(path), adapter_name="x")
    stock.set_adapters(["x"], [0.7])
    stock.set_ip_adapter_scale({"up": {"block_1": [1.0, 1.0, 1.0]}})  # SD1.5's style preset: up_blocks.1
    mine = ours(model, style=[red], loras=[f"{path}:0.7"])
    ref = stock_run(stock, ip_adapter_image=Image.open(red))
    assert np.abs(mine - ref).max() <= TOL
    assert np.abs(mine - ours(model, style=[red])).max() > 10 * TOL  # the LoRA matters
