"""The fast path (instantstyle.fast, instantstyle.memory): exact vs the plain path, only the intended layers
change, everything restored, no recompiles, fp8 maths, bad inputs, the benchmark's tiny mode."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from instantstyle import fast as fast_path
from instantstyle import memory as memory_modes
from instantstyle.adapter import ip_processors
from instantstyle.blocks import PRESETS
from instantstyle.errors import InstantStyleError
from instantstyle.fast import call as fast_call
from instantstyle.fast import compiling
from instantstyle.fast import fp8 as fast_fp8
from instantstyle.fast import plan as fast_plan
from instantstyle.processors import fast as fast_processors

TOL = 2  # 2/255 on uint8 images
BASE = dict(prompt="a cat", seed=3, steps=2, width=64, height=64)
# The eager backend traces with dynamo (guards, graphs, recompiles) without C++ code generation.
FAST_EAGER = fast_path.FastOptions(compile=True, compile_backend="eager", fuse_qkv=True, channels_last=True)


@contextlib.contextmanager
def speed(model, options):
    saved = model.speed
    model.speed = fast_path.options_for(options)
    try:
        yield
    finally:
        model.speed = saved


def generate(model, options, style, **params):
    with speed(model, options):
        image = model.generate(style=[str(style)], **{**BASE, **params})[0]
    return np.asarray(image).astype(np.int16)


def state(unet):
    """Everything the scope may touch, by identity."""
    blocks = compiling.transformer_blocks(unet)
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    return {
        "processors": {k: id(v) for k, v in unet.attn_processors.items()},
        "proj": id(unet.encoder_hid_proj),
        "compiled": [b._compiled_call_impl for b in blocks],
        "contiguous": conv.weight.is_contiguous(),
        "modules": [id(m) for m in unet.modules()],
        "scales": {k: list(p.scale) for k, p in ip_processors(unet).items()},
    }


def active_processors(model, mode="style"):
    return {p for m in model.modules if m.name in {i.target for i in PRESETS[mode]} for p in m.processors}


def test_fast_path_matches_plain_and_style_still_matters(tiny_model, style_images):
    plain = generate(tiny_model, "plain", style_images["red"])
    exact = generate(tiny_model, "exact", style_images["red"])
    fast = generate(tiny_model, FAST_EAGER, style_images["red"])
    fast_blue = generate(tiny_model, FAST_EAGER, style_images["blue"])
    assert np.abs(exact - plain).max() <= TOL
    assert np.abs(fast - plain).max() <= TOL
    assert np.abs(fast_blue - fast).max() > 20 * TOL  # the style reference still drives the picture


def test_style_layout_preset_matches_plain(tiny_model, style_images):
    plain = generate(tiny_model, "plain", style_images["green"], mode="style+layout", scale=0.6, steps=1)
    exact = generate(tiny_model, "exact", style_images["green"], mode="style+layout", scale=0.6, steps=1)
    assert np.abs(exact - plain).max() <= TOL


def test_light_processors_only_on_inactive_blocks(tiny_model):
    unet = tiny_model.pipe.unet
    active = active_processors(tiny_model)
    with tiny_model_scales(tiny_model, "style"), fast_path.scope(tiny_model.pipe, "exact"):
        procs = unet.attn_processors
        for name in ip_processors_names(tiny_model):
            proc = procs[name]
            assert isinstance(proc, fast_processors.FastAttention)
            assert bool(proc.ip) == (name in active), name
        assert any(isinstance(p, fast_processors.FastAttention) and p.ip for p in procs.values())


def test_image_weights_run_only_on_active_blocks(tiny_model, style_images):
    """Hooks on every to_k_ip: under the fast path only the style block's layers call them."""
    unet = tiny_model.pipe.unet
    called, handles = set(), []
    for name, proc in ip_processors(unet).items():
        handles.append(proc.to_k_ip[0].register_forward_hook(lambda *a, n=name: called.add(n)))
    try:
        generate(tiny_model, "exact", style_images["red"])
        assert called == active_processors(tiny_model)
        called.clear()
        generate(tiny_model, "plain", style_images["red"])  # diffusers also skips scale 0, in Python
        assert called == active_processors(tiny_model)
    finally:
        for h in handles:
            h.remove()


def test_projection_runs_once_per_call(tiny_model, style_images):
    inner = tiny_model.pipe.unet.encoder_hid_proj
    calls = []
    handle = inner.register_forward_hook(lambda *a: calls.append(1))
    try:
        generate(tiny_model, "plain", style_images["red"], steps=3)
        assert len(calls) == 3  # diffusers: every UNet call
        calls.clear()
        generate(tiny_model, "exact", style_images["red"], steps=3)
        assert len(calls) == 1
    finally:
        handle.remove()


def test_every_patch_is_restored(tiny_model, style_images):
    unet = tiny_model.pipe.unet
    before = state(unet)
    generate(tiny_model, FAST_EAGER, style_images["red"], steps=1)
    assert state(unet) == before
    with pytest.raises(RuntimeError, match="boom"), fast_path.scope(tiny_model.pipe, FAST_EAGER):
        assert state(unet) != before
        raise RuntimeError("boom")
    assert state(unet) == before


def test_no_recompiles_when_style_prompt_scale_or_preset_change(tiny_model, style_images):
    pytest.importorskip("torch._dynamo")
    if not hasattr(torch, "compile"):  # pragma: no cover - depends on the torch build
        pytest.skip("torch.compile unavailable")
    from torch._dynamo.utils import counters

    generate(tiny_model, FAST_EAGER, style_images["red"], steps=1)
    graphs = counters["stats"]["unique_graphs"]  # since the process started
    assert graphs > 0  # the blocks really were compiled
    generate(tiny_model, FAST_EAGER, style_images["blue"], steps=1, prompt="a dog", scale=0.5)
    generate(tiny_model, FAST_EAGER, style_images["green"], steps=1, mode="style+layout", scale=1.3)
    generate(tiny_model, FAST_EAGER, style_images["green"], steps=1, mode="layout", seed=9)
    assert counters["stats"]["unique_graphs"] == graphs


def test_masks_keep_diffusers_processors(tiny_model):
    with tiny_model_scales(tiny_model, "style"):
        plan = fast_plan.plan_processors(tiny_model.pipe.unet, fast_path.EXACT, masks=True)
        assert not set(plan) & set(ip_processors_names(tiny_model))
        plan = fast_plan.plan_processors(tiny_model.pipe.unet, fast_path.EXACT, masks=False)
        assert set(plan) == set(ip_processors_names(tiny_model))


def test_float8_linear_is_close_but_not_exact():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        ref = linear(x)
        out = fast_fp8.Float8Linear(linear)(x)
    rel = float((out - ref).norm() / ref.norm().detach())
    assert out.shape == ref.shape
    assert 0 < rel < 0.1


def test_fp8_scope_swaps_only_transformer_linears_and_restores(tiny_model):
    unet = tiny_model.pipe.unet
    before = state(unet)
    with (
        tiny_model_scales(tiny_model, "style"),
        fast_path.scope(tiny_model.pipe, fast_path.FastOptions(fp8=True)),
    ):
        swapped = [m for m in unet.modules() if isinstance(m, fast_fp8.Float8Linear)]
        assert swapped
        for proc in ip_processors(unet).values():  # the IP weights (4 tokens) stay as they are
            assert isinstance(proc.to_k_ip[0], torch.nn.Linear)
        assert isinstance(unet.time_embedding.linear_1, torch.nn.Linear)
    assert state(unet) == before


def test_bad_speed_and_memory_are_one_line_errors(tiny_model):
    with pytest.raises(InstantStyleError, match="--speed 'warp'"):
        fast_path.options_for("warp")
    with pytest.raises(InstantStyleError, match="--memory 'tiny'"):
        memory_modes.apply_memory_mode(tiny_model.pipe, "tiny", "cpu")
    with pytest.raises(InstantStyleError, match="needs --device cuda"):
        memory_modes.apply_memory_mode(tiny_model.pipe, "low", "cpu")
    assert fast_path.options_for("auto", "cpu") == fast_path.EXACT
    assert fast_path.options_for("auto", "cuda") == fast_path.GRAPHS  # a CLI run: nothing to compile
    assert fast_path.options_for("auto", "cuda", long_lived=True) == fast_path.MAX  # a server
    assert memory_modes.auto_memory("cpu") == "normal"
    assert not fast_path.options_for("fp8").exact


def test_benchmark_tiny_mode_runs(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    out = tmp_path / "bench.json"
    rc = bench.main(
        [
            "--tiny",
            "--json",
            str(out),
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--only",
            "stock-style-b1,ours-plain-style-b1,ours-fp8-style-b1,ours-low-style-b1",
        ]
    )
    assert rc == 0
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["stock-style-b1"]["s_per_image"] > 0
    assert rows["ours-plain-style-b1"]["rel_l2_vs_stock"] == 0.0  # same processors, same numbers
    assert 0 < rows["ours-fp8-style-b1"]["rel_l2_vs_stock"] < 0.5  # an approximation, and reported
    assert rows["ours-low-style-b1"]["skipped"] == "CUDA only"


# ---------------------------------------------------------------------- helpers


def ip_processors_names(model):
    return [p for m in model.modules for p in m.processors]


@contextlib.contextmanager
def tiny_model_scales(model, mode):
    from instantstyle.adapter import scoped_scales

    scales = model.resolve_scales(model.request(prompt="x", mode=mode))
    with scoped_scales(model.pipe.unet, [scales]):
        yield


def test_cli_choices_match_the_speed_and_memory_names():
    from instantstyle.cli import build_parser

    parser = build_parser()
    sub = next(
        a
        for a in parser._actions
        if a.dest == "command" or getattr(a, "choices", None) and "generate" in a.choices
    )
    gen = sub.choices["generate"]
    choices = {a.dest: tuple(a.choices) for a in gen._actions if a.dest in ("speed", "memory")}
    assert choices == {"speed": fast_path.SPEEDS, "memory": memory_modes.MEMORY_CHOICES}


def test_offloaded_unet_keeps_only_module_level_pieces(tiny_model):
    """Under offloading (weights move during the call) no piece may hold tensors: seen on an H200."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    unet = tiny_model.pipe.unet
    with fast_path.scope(tiny_model.pipe, FAST_EAGER) as used:
        assert used.light_inactive and used.fuse_qkv and used.compile  # not offloaded: everything
    add_hook_to_module(unet, ModelHook())  # what accelerate's offloading leaves on the module
    try:
        with fast_path.scope(tiny_model.pipe, replace(FAST_EAGER, attention="math")) as used:
            assert not (
                used.light_inactive or used.fuse_qkv or used.compile or used.channels_last or used.fp8
            )
            assert used.project_once and used.attention == "auto"
    finally:
        remove_hook_from_module(unet)
        unet.__dict__.pop("forward", None)  # accelerate leaves the original bound method behind


def test_sdpa_pin_covers_the_unet_only(tiny_model, style_images, monkeypatch):
    """A pinned SDPA kernel applies inside the UNet's forward, not to the VAE (no flash kernel for
    its single 512-wide head on a GPU), and the UNet's forward is restored afterwards."""
    entered = []
    real = fast_call._sdpa_backend
    monkeypatch.setattr(fast_call, "_sdpa_backend", lambda name: entered.append(name) or real(name))
    unet = tiny_model.pipe.unet
    assert "forward" not in unet.__dict__
    tiny_model.speed = fast_path.FastOptions(attention="math")
    try:
        tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], steps=2, seed=0)
    finally:
        tiny_model.speed = fast_path.options_for("auto", tiny_model.device)
    assert entered == ["math"] * 2  # one UNet call per step (CFG is one batched call), nothing else
    assert "forward" not in unet.__dict__


def test_low_memory_modes_decode_in_small_tiles():
    """SDXL's VAE tiles at 1024 px, so 'tiling' alone never splits a 1024 px decode."""

    class Vae:
        tile_sample_min_size, tile_latent_min_size = 1024, 128
        use_tiling = use_slicing = False

        def enable_tiling(self):
            self.use_tiling = True

        def disable_tiling(self):
            self.use_tiling = False

        def enable_slicing(self):
            self.use_slicing = True

        def disable_slicing(self):
            self.use_slicing = False

    vae = Vae()
    memory_modes.vae_tiles(vae, small=True)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.use_tiling, vae.use_slicing) == (
        512,
        64,
        True,
        True,
    )
    memory_modes.vae_tiles(vae, small=False)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.use_tiling, vae.use_slicing) == (
        1024,
        128,
        False,
        False,
    )


def test_release_caches_drops_fused_weights_and_processors(tiny_model, style_images):
    unet = tiny_model.pipe.unet
    generate(tiny_model, FAST_EAGER, style_images["red"], steps=1)
    attns = [m for m in unet.modules() if hasattr(m, "to_q")]
    assert any(m in fast_plan._FUSED for m in attns) and any(m in fast_plan._PROCESSORS for m in attns)
    fast_path.release_caches(unet)
    assert not any(m in fast_plan._FUSED or m in fast_plan._PROCESSORS for m in attns)
    plain = generate(tiny_model, "plain", style_images["red"], steps=1)
    again = generate(tiny_model, FAST_EAGER, style_images["red"], steps=1)  # rebuilt on demand
    assert np.abs(again - plain).max() <= TOL


@pytest.mark.parametrize(
    ("gib", "mode"), [(80, "normal"), (23.6, "normal"), (15.7, "balanced"), (11.7, "low"), (7.6, "lowest")]
)
def test_auto_memory_follows_the_card_size(gib, mode, monkeypatch):
    class Props:
        total_memory = int(gib * 2**30)

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert memory_modes.auto_memory("cuda") == mode


def test_fused_weights_stay_trainable(tiny_model, style_images):
    """Calls run in inference mode; the fused QKV weights the layers then view must not be inference
    tensors, or training on the same model later fails (seen: B-LoRA after a fused call)."""
    unet = tiny_model.pipe.unet
    generate(tiny_model, fast_path.FastOptions(fuse_qkv=True), style_images["red"], steps=1)
    assert any(m in fast_plan._FUSED for m in unet.modules())
    assert not any(p.is_inference() for p in unet.parameters())
    attn = next(m for m in unet.modules() if m in fast_plan._FUSED)
    x = torch.randn(1, 3, attn.to_q.in_features, requires_grad=True)
    attn.to_q(x).sum().backward()  # autograd through a fused view works
    assert x.grad is not None
