"""Few-step sampling: LCM, TCD and trailing spacing equal stock diffusers; presets, custom
timesteps, the low-guidance warning and the sampling fields' bad input.

Stock side: ``StableDiffusionXLPipeline`` + ``load_ip_adapter`` on the same tiny files, the
scheduler built with ``<Class>.from_config(pipe.scheduler.config, timestep_spacing="trailing")``,
the same seed; 64 px, 1-4 steps, guidance 0 (no CFG: only the IP-Adapter's conditional branch).
"""

from __future__ import annotations

import inspect
import json
import warnings

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import schedulers
from instantstyle.cli import main
from instantstyle.config import make_request
from instantstyle.prompts import collected_warnings
from instantstyle.schedulers import FewStepGuidanceWarning
from stock_diffusers import load_stock_sdxl

TOL = 2 / 255
STYLE_BLOCK = {"up": {"block_0": [0.0, 1.0, 0.0]}}


@pytest.fixture(scope="module")
def stock(tiny_paths, tiny_model):
    pipe = load_stock_sdxl(tiny_paths, tiny_model.feature_extractor)
    pipe.set_ip_adapter_scale(STYLE_BLOCK)
    return pipe


def stock_run(pipe, style, scheduler_cls, steps, guidance=0.0, spacing="trailing", **kw):
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(original.config, timestep_spacing=spacing)
    try:
        return pipe(
            prompt="a cat",
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(0),
            ip_adapter_image=Image.open(style),
            output_type="np",
            **kw,
        ).images
    finally:
        pipe.scheduler = original


def ours(model, style, **kw):
    params = dict(prompt="a cat", seed=0, style=[str(style)], guidance=0.0) | kw
    images = model.generate(**params)
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images]), images


@pytest.mark.parametrize(
    "name, cls, steps, guidance, extra",
    [
        ("lcm", "LCMScheduler", 2, 0.0, {}),
        ("tcd", "TCDScheduler", 2, 0.0, {"eta": 0.3}),
        ("euler", "EulerDiscreteScheduler", 2, 0.0, {}),
        ("dpm++2m", "DPMSolverMultistepScheduler", 3, 1.5, {}),
    ],
)
def test_few_step_samplers_equal_stock_diffusers(
    stock, tiny_model, style_images, name, cls, steps, guidance, extra
):
    red, blue = style_images["red"], style_images["blue"]
    ref = stock_run(stock, red, cls, steps, guidance, **extra)
    spacing = {} if name in schedulers.FEW_STEP_SAMPLERS else {"timestep_spacing": "trailing"}
    mine, images = ours(tiny_model, red, scheduler=name, steps=steps, guidance=guidance, **spacing, **extra)
    assert np.abs(mine - ref).max() <= TOL
    used = json.loads(images[0].info["instantstyle"])["sampler_used"]
    assert used["class"] == cls and len(used["timesteps"]) >= steps
    # The check can fail: another style image moves the output far beyond the tolerance ...
    other, _ = ours(tiny_model, blue, scheduler=name, steps=steps, guidance=guidance, **spacing, **extra)
    assert np.abs(other - ref).max() > 5 * TOL
    if spacing:  # ... and so does the scheduler's own (leading) spacing instead of trailing
        leading, images = ours(tiny_model, red, scheduler=name, steps=steps, guidance=guidance, **extra)
        assert np.abs(leading - ref).max() > 10 * TOL
        assert json.loads(images[0].info["instantstyle"])["sampler_used"]["timestep_spacing"] == "leading"


def test_custom_timesteps_reach_the_pipeline(stock, tiny_model, style_images):
    red = style_images["red"]
    # Hyper-SDXL's 1-step UNet: LCM at timestep 800 (stock: timesteps=[800]).
    ref = stock_run(stock, red, "LCMScheduler", 1, timesteps=[800])
    mine, images = ours(tiny_model, red, sampling="hyper-sd-1step-unet")
    assert np.abs(mine - ref).max() <= TOL
    assert np.abs(stock_run(stock, red, "LCMScheduler", 1) - ref).max() > 10 * TOL  # 999 instead of 800
    assert json.loads(images[0].info["instantstyle"])["sampler_used"]["timesteps"] == [800]
    # DMD2: LCM at 999/749/499/249, recorded as run.
    ref = stock_run(stock, red, "LCMScheduler", 4, timesteps=[999, 749, 499, 249])
    mine, images = ours(tiny_model, red, sampling="dmd2-4step")
    assert np.abs(mine - ref).max() <= TOL
    assert np.abs(stock_run(stock, red, "LCMScheduler", 4) - ref).max() > TOL  # LCM's own 999/759/499/259
    meta = json.loads(images[0].info["instantstyle"])
    assert meta["sampler_used"]["timesteps"] == [999, 749, 499, 249] and meta["steps"] == 4


def test_the_request_sampler_does_not_leak(tiny_model, style_images):
    before = tiny_model.pipe.scheduler
    ours(tiny_model, style_images["red"], scheduler="tcd", steps=1, eta=1.0)
    assert tiny_model.pipe.scheduler is before and before.config.timestep_spacing == "leading"


def test_presets_fill_the_defaults_and_given_values_win():
    req = make_request(prompt="x", sampling="lightning-4step")
    assert (req.scheduler, req.steps, req.guidance, req.timestep_spacing) == ("euler", 4, 0.0, "trailing")
    req = make_request(prompt="x", sampling="lightning-4step", steps=8, guidance=1.0, scheduler="euler-a")
    assert (req.scheduler, req.steps, req.guidance, req.timestep_spacing) == ("euler-a", 8, 1.0, "trailing")
    req = make_request(prompt="x", sampling="turbo-1step")
    assert (req.scheduler, req.steps, req.width, req.height) == ("euler-a", 1, 512, 512)
    req = make_request(prompt="x", sampling="hyper-sd-1step")
    assert (req.scheduler, req.eta, req.guidance) == ("tcd", 1.0, 0.0)
    req = make_request(prompt="x", sampling="dmd2-4step")
    assert (req.scheduler, req.timesteps, req.steps) == ("lcm", [999, 749, 499, 249], 4)
    assert make_request(prompt="x", timesteps="999, 499").steps == 2  # a form's text; steps follow
    for name, preset in schedulers.PRESETS.items():  # every preset is a valid request on its own
        req = make_request(prompt="x", sampling=name)
        assert req.scheduler == preset.scheduler and req.steps == preset.steps, name


def test_sampler_table_matches_diffusers():
    """Each sampler's claims (spacing read, custom timesteps, eta) are what its diffusers class does."""
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    for name, s in schedulers.SAMPLERS.items():
        cls = getattr(diffusers, s.cls)
        runs = {}
        for spacing in schedulers.SPACINGS:
            sched = cls(**config, **s.extra, timestep_spacing=spacing)
            sched.set_timesteps(4)
            runs[spacing] = [float(t) for t in sched.timesteps]
        assert (runs["leading"] != runs["trailing"]) == s.spacing, name
        assert ("eta" in inspect.signature(cls.step).parameters) == s.eta, name
        takes = "timesteps" in inspect.signature(cls.set_timesteps).parameters and not s.extra
        assert takes == s.custom_timesteps, name


def test_guidance_above_2_warns_on_a_few_step_model(tiny_model, style_images):
    red = style_images["red"]
    with collected_warnings() as notes, pytest.warns(FewStepGuidanceWarning, match="--guidance 5"):
        tiny_model.generate(
            prompt="a cat", style=[str(red)], sampling="lightning-2step", guidance=5.0, seed=0
        )
    assert len(notes) == 1 and "--sampling lightning-2step" in notes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewStepGuidanceWarning)
        tiny_model.generate(
            prompt="a cat", style=[str(red)], sampling="lightning-2step", guidance=2.0, seed=0
        )
        tiny_model.generate(prompt="a cat", style=[str(red)], steps=1, guidance=5.0, seed=0)  # not few-step
    # Named models: a base, a VAE or a user LoRA (the field may not exist yet: read with getattr).
    req = make_request(prompt="x", guidance=6.0)
    assert schedulers.guidance_warning(req, {"base": "ByteDance/SDXL-Lightning"})
    assert schedulers.guidance_warning(req, {"base": "stabilityai/sdxl-turbo"})
    assert schedulers.guidance_warning(req, {"base": "stabilityai/stable-diffusion-xl-base-1.0"}) is None
    with_lora = make_request(prompt="x", guidance=6.0, loras=["loras/Hyper-SDXL-4steps-lora.safetensors:0.8"])
    assert "lora 'loras/Hyper-SDXL-4steps-lora.safetensors')" in schedulers.guidance_warning(with_lora, {})
    cfg_lora = {"lora": "Hyper-SDXL-8steps-CFG-lora.safetensors"}  # CFG-preserving: made for guidance 5-8
    assert schedulers.guidance_warning(req, cfg_lora) is None
    assert schedulers.guidance_warning(make_request(prompt="x", sampling="hyper-sd-8step-cfg"), {}) is None


@pytest.mark.parametrize(
    "args, words",
    [
        (["--timestep-spacing", "sideways"], "invalid choice: 'sideways'"),
        (["--scheduler", "lcm", "--timestep-spacing", "trailing"], "is not read by --scheduler lcm"),
        (["--scheduler", "dpm++2m-karras", "--timestep-spacing", "trailing"], "Karras sigmas replace it"),
        (["--sampling", "dmd2-4step", "--steps", "3"], "--steps 3 does not match the 4 --timesteps"),
        (["--scheduler", "ddim", "--timesteps", "999", "499"], "needs a sampler that takes custom timesteps"),
        (["--eta", "0.5"], "--eta is read only by --scheduler ddim and tcd"),
        (
            ["--sampling", "lightning-2step", "--style-window", "0.6:0.9"],
            "selects none of the 2 denoising steps",
        ),
    ],
)
def test_bad_sampling_input_is_one_line_and_writes_nothing(tmp_path, style_images, capsys, args, words):
    out = tmp_path / "x.png"
    argv = ["generate", "--base", "tiny", "--style", str(style_images["red"]), "--prompt", "a cat"]
    try:
        code = main([*argv, *args, "--out", str(out), "--quiet"])
    except SystemExit as exc:  # argparse's own choice check
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code != 0 and words in err and not out.exists()
    assert len(err.splitlines()) == 1 or err.startswith("usage:")


def test_bad_sampling_input_is_http_400_and_the_job_carries_the_warning(tiny_model, red_png_bytes):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app
    from instantstyle.server.service import GenerationService

    files = [("images", ("red.png", red_png_bytes, "image/png"))]
    with (
        GenerationService(tiny_model, queue_size=2, cpu_threads=1) as svc,
        TestClient(create_app(svc, ui=False), base_url="http://127.0.0.1") as client,
    ):
        bad = {"prompt": "x", "scheduler": "tcd", "timestep_spacing": "trailing"}
        r = client.post("/v1/generate?wait=true", data={"params": json.dumps(bad)}, files=files)
        assert r.status_code == 400 and "not read by --scheduler tcd" in r.json()["error"]["message"]
        ok = {
            "prompt": "x",
            "sampling": "lightning-2step",
            "guidance": 4.0,
            "seed": 1,
            "width": 64,
            "height": 64,
        }
        with pytest.warns(FewStepGuidanceWarning):  # warned, and carried by the job
            r = client.post("/v1/generate?wait=true", data={"params": json.dumps(ok)}, files=files)
        assert r.status_code == 200, r.text
        (warning,) = r.json()["warnings"]
        assert warning.startswith("--guidance 4 with a few-step model (--sampling lightning-2step)")


@pytest.fixture(scope="module")
def red_png_bytes(style_images) -> bytes:
    return style_images["red"].read_bytes()


def test_the_ui_shows_a_presets_values_in_its_widgets():
    from instantstyle.server.ui_form import PRESET_FIELDS, preset_changed

    current = ["euler", 30, "", "trailing", "", ""]
    assert PRESET_FIELDS == ("scheduler", "steps", "guidance", "timestep_spacing", "timesteps", "eta")
    assert preset_changed("dmd2-4step", *current) == ["lcm", 4, 0.0, None, "999, 749, 499, 249", None]
    assert preset_changed(None, *current) == current


def test_graph_replay_follows_the_sampler(tiny_model, style_images):
    """``--speed graphs`` on the CPU (``TracedCapture``: CUDA-graph semantics, Python frozen at
    capture): the sampler runs outside the UNet and the timestep is a graph input, so one graph
    serves several samplers and timesteps without replaying a stale picture (a float timestep,
    as Euler's, keys its own graph: ``fast.graphs`` keys on dtypes)."""
    from instantstyle import fast as fast_path
    from instantstyle.fast import graphs, unet_graphs

    red = style_images["red"]
    runs = [  # three samplers with integer timesteps: one graph, replayed by each
        dict(scheduler="ddim", timestep_spacing="trailing", steps=1),
        dict(sampling="hyper-sd-1step-unet"),  # LCM at timestep 800
        dict(scheduler="tcd", steps=1, eta=1.0),
    ]
    saved = tiny_model.speed
    try:
        tiny_model.speed = fast_path.PLAIN
        refs = [ours(tiny_model, red, **run)[0] for run in runs]
        # a stale replay would show: each sampler's picture differs from the one before it
        assert all(np.abs(a - b).max() > 10 * TOL for a, b in zip(refs, refs[1:], strict=False))
        cache = unet_graphs.graph_cache(tiny_model.pipe.unet, graphs.TracedCapture())
        tiny_model.speed = fast_path.FastOptions(cuda_graphs=True)
        for run, ref in zip(runs, refs, strict=True):
            assert np.abs(ours(tiny_model, red, **run)[0] - ref).max() <= TOL, run
        assert (cache.captures, cache.replays) == (1, 3)
    finally:
        tiny_model.speed = saved
        unet_graphs.release_graphs(tiny_model.pipe.unet)


def test_baselines_warn_on_a_few_step_base_too(tiny_model, monkeypatch):
    from instantstyle.methods import _common

    monkeypatch.setattr(tiny_model, "ids", {**tiny_model.ids, "base": "ByteDance/SDXL-Lightning"})
    req = make_request(prompt="x", method="style-aligned", reference_prompt="a red square", steps=2)
    assert req.guidance == 10.0  # StyleAligned's own default
    with pytest.warns(FewStepGuidanceWarning, match="base 'ByteDance/SDXL-Lightning'"):
        _common.setup(tiny_model, req)
