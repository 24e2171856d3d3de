"""The speed pieces of ``instantstyle.fast`` on the tiny model (CPU): each exact piece on vs off
within its tolerance, with a check that it really ran and no recompile/recapture where it touches
the graph paths; each approximation off unless asked for and within its stated bound."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from instantstyle import fast as fast_path
from instantstyle.errors import InstantStyleError
from instantstyle.fast import cfg, compiling, deepcache, graphs, unet_graphs
from instantstyle.fast import fp8 as fast_fp8
from instantstyle.fast import plan as fast_plan
from instantstyle.fast import vae as fast_vae

TOL = 2  # 2/255 on uint8 images
BASE = dict(prompt="a cat", seed=3, steps=4, width=64, height=64)
# Bounds stated in docs/performance.md (relative L2 of the final latents on random weights).
FP8_BOUND, CFG_BOUND, DEEPCACHE_BOUND = 6e-2, 2e-2, 1e-1


def rel_l2(a, b) -> float:
    return float((a - b).norm() / b.norm())


@contextlib.contextmanager
def speed(model, options):
    saved = model.speed
    model.speed = options
    try:
        yield
    finally:
        model.speed = saved


def latents(model, options, style, **params):
    grabbed = {}

    def grab(_pipe, _i, _t, kw):
        grabbed["z"] = kw["latents"]
        return kw

    with speed(model, options):
        prep = model.prepare(model.request(**{**BASE, **params}), style_images=[str(style)])
        model.run(
            model.pipe,
            prep,
            callback_on_step_end=grab,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent",
        )
    return grabbed["z"].float().clone()


def image(model, options, style, **params):
    with speed(model, options):
        out = model.generate(style=[str(style)], **{**BASE, **params})[0]
    return out, np.asarray(out).astype(np.float64)


@contextlib.contextmanager
def counting(module, calls: list, pre: bool = False):
    handle = (
        module.register_forward_pre_hook(
            lambda m, a, kw: calls.append(a[0].shape[0] if a else 0), with_kwargs=True
        )
        if pre
        else module.register_forward_hook(lambda *a: calls.append(1))
    )
    try:
        yield calls
    finally:
        handle.remove()


def cross_attention(model):
    return next(m for n, m in model.pipe.unet.named_modules() if n.endswith("attn2"))


def test_context_kv_once_per_call_is_exact(tiny_model, style_images):
    ref = latents(tiny_model, fast_path.EXACT, style_images["red"])
    attn = cross_attention(tiny_model)
    options = replace(fast_path.EXACT, context_kv=True, fuse_qkv=True)
    with counting(attn.to_q, []) as q_calls:
        once = latents(tiny_model, options, style_images["red"])
    cache = tiny_model.pipe.unet.__dict__["_instantstyle_context"]
    assert cache.fills == 1 and len(q_calls) == BASE["steps"]  # K/V once for 4 steps; queries every step
    assert rel_l2(once, ref) < 1e-6  # the same projections, computed once
    blue = latents(tiny_model, options, style_images["blue"], prompt="a dog")
    assert rel_l2(blue, once) > 1e-2  # new prompt and style: new keys/values, not stale ones
    assert rel_l2(blue, latents(tiny_model, fast_path.EXACT, style_images["blue"], prompt="a dog")) < 1e-6


def test_prune_ip_one_graph_per_preset_no_recapture_on_data(tiny_model, style_images):
    """Graph path (CUDA-graph semantics on the CPU): inactive IP layers lose their branch, a preset
    is captured once, a new style image, prompt or scale replays the same graph."""
    tuned = replace(fast_path.MAX_TUNED, compile=False, compile_vae=False, vae_decode="stock")
    unet = tiny_model.pipe.unet
    one = dict(steps=2)
    refs = {
        k: image(tiny_model, fast_path.PLAIN, style_images[s], mode=m, scale=sc, prompt=p, **one)[1]
        for k, (s, m, sc, p) in {
            "a": ("red", "style", 1.0, "a cat"),
            "b": ("blue", "style", 0.5, "a dog"),
            "c": ("red", "style+layout", 1.0, "a cat"),
        }.items()
    }
    assert np.abs(refs["c"] - refs["a"]).max() > 20 * TOL and np.abs(refs["b"] - refs["a"]).max() > 20 * TOL
    cache = unet_graphs.graph_cache(unet, graphs.TracedCapture())
    try:
        a = image(tiny_model, tuned, style_images["red"], **one)[1]
        assert cache.captures == 1
        b = image(tiny_model, tuned, style_images["blue"], scale=0.5, prompt="a dog", **one)[1]
        assert cache.captures == 1  # data, not structure
        c = image(tiny_model, tuned, style_images["red"], mode="style+layout", **one)[1]
        image(tiny_model, tuned, style_images["blue"], **one)
        assert cache.captures == 2  # one graph per preset, kept
    finally:
        unet_graphs.release_graphs(unet)
    for key, out in {"a": a, "b": b, "c": c}.items():
        assert np.abs(out - refs[key]).max() <= TOL, key
    # The visible effect: under pruning inactive layers carry no image branch; uniform ones all do.
    from instantstyle.adapter import scoped_scales

    with scoped_scales(unet, [tiny_model.resolve_scales(tiny_model.request(prompt="x", mode="style"))]):
        pruned = fast_plan.plan_processors(unet, tuned)
        uniform = fast_plan.plan_processors(unet, replace(tuned, prune_ip=False))
    assert sum(1 for p in pruned.values() if p.ip) < sum(1 for p in uniform.values() if p.ip)


def test_prune_ip_compiled_does_not_recompile_on_data(tiny_model, style_images):
    from torch._dynamo.utils import counters

    compiled = replace(
        fast_path.MAX_TUNED, compile_backend="eager", cuda_graphs=False, compile_vae=False, vae_decode="stock"
    )
    first = latents(tiny_model, compiled, style_images["red"], steps=1)
    graphs_before = counters["stats"]["unique_graphs"]
    second = latents(tiny_model, compiled, style_images["blue"], steps=1, prompt="a dog", scale=0.4)
    assert counters["stats"]["unique_graphs"] == graphs_before
    assert rel_l2(first, latents(tiny_model, fast_path.PLAIN, style_images["red"], steps=1)) < 1e-5
    assert (
        rel_l2(
            second,
            latents(tiny_model, fast_path.PLAIN, style_images["blue"], steps=1, prompt="a dog", scale=0.4),
        )
        < 1e-5
    )


def test_vae_twin_decodes_in_bf16_within_40_db(tiny_model, style_images):
    vae = tiny_model.pipe.vae
    _, ref = image(tiny_model, fast_path.EXACT, style_images["red"])
    dtype_before = vae.dtype
    fast_vae.twin(vae, torch.bfloat16)  # made before the hook below (a copy would carry it)
    with counting(vae.decoder, []) as stock_calls:
        out, fast = image(tiny_model, replace(fast_path.EXACT, vae_decode="bf16"), style_images["red"])
    twin = fast_vae.twin(vae, torch.bfloat16)
    assert twin.calls >= 1 and not stock_calls  # the twin decoded, the stock decoder did not run
    assert vae.dtype == dtype_before and twin.decoder.conv_in.weight.dtype == torch.bfloat16
    assert twin.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    psnr = 10 * np.log10(255**2 / max(((fast - ref) ** 2).mean(), 1e-12))
    assert 40 <= psnr < 150  # exact within the tier's bound, and really another precision
    assert "approximations" not in out.info["instantstyle"]
    assert fast_vae.decode_dtype(vae, "auto") == vae.dtype  # fp32 VAE on the CPU: no reason to round
    assert fast_vae.twin(vae, torch.bfloat16) is twin  # kept: no per-call copy or cast


def test_compile_settings_are_keyed_and_cached_on_disk(tmp_path, monkeypatch):
    kwargs = compiling.compile_kwargs("inductor", "max-autotune-no-cudagraphs", tuning=True)
    assert kwargs["options"]["coordinate_descent_tuning"] and kwargs["options"]["max_autotune"]
    assert "mode" not in kwargs  # torch.compile takes a mode or options, not both
    assert compiling.compile_kwargs("eager", None, tuning=True) == {"backend": "eager", "mode": None}
    base = fast_path.MAX
    keys = {
        compiling.compile_key("unet", o)
        for o in (
            base,
            replace(base, attention="flash"),
            replace(base, inductor_tuning=True),
            replace(base, compile_mode="max-autotune-no-cudagraphs"),
            replace(base, fp8=True, fp8_scaling="row"),
        )
    }
    assert len(keys) == 5  # every trace-time choice gets its own artefact
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    import os

    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    path = compiling.set_cache_dir(tmp_path / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(path) and path.is_dir() and inductor.fx_graph_cache
    saved = torch.backends.cudnn.benchmark
    with compiling.cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == saved


def test_rowwise_fp8_maths_and_outlier_rows():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    x[0, 0] *= 1e4  # one outlier token
    fp8 = fast_fp8.RowwiseFloat8Linear(lin)
    y, ref = fp8(x), lin(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err_rows = ((y - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten()
    assert 0 < err_rows.max() < 5e-2  # every row close, none exact
    per_tensor = fast_fp8.Float8Linear(lin)(x)
    other = ((per_tensor - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten()[1:]
    assert err_rows[1:].max() < other.max()  # the outlier spoils only its own row under row-wise scales


def test_fp8_rowwise_is_opt_in_and_within_its_bound(tiny_model, style_images):
    assert all(not o.fp8 for o in map(fast_path.options_for, ("exact", "max", "max-tuned", "max-autotune")))
    ref = latents(tiny_model, fast_path.EXACT, style_images["red"])
    swapped = []
    originals = [m for m in tiny_model.pipe.unet.modules() if isinstance(m, fast_fp8.RowwiseFloat8Linear)]
    hooks = []
    original_forward = fast_fp8.RowwiseFloat8Linear.forward

    def counted(self, x):
        swapped.append(1)
        return original_forward(self, x)

    fast_fp8.RowwiseFloat8Linear.forward = counted
    try:
        out = latents(tiny_model, replace(fast_path.EXACT, fp8=True, fp8_scaling="row"), style_images["red"])
    finally:
        fast_fp8.RowwiseFloat8Linear.forward = original_forward
        for h in hooks:
            h.remove()
    assert swapped and not originals  # the row-wise twins ran, and were swapped out afterwards
    assert not any(isinstance(m, fast_fp8.RowwiseFloat8Linear) for m in tiny_model.pipe.unet.modules())
    assert 0 < rel_l2(out, ref) < FP8_BOUND


def test_cfg_truncation_drops_the_unconditional_half_late(tiny_model, style_images):
    assert cfg.first_truncated_step(30, 0.4) == 18 and cfg.first_truncated_step(4, 0.0) == 4
    assert all(o.cfg_truncation == 0 for o in map(fast_path.options_for, ("exact", "max-tuned", "deepcache")))
    ref = latents(tiny_model, fast_path.EXACT, style_images["red"])
    options = replace(fast_path.EXACT, cfg_truncation=0.5, context_kv=True)
    with counting(tiny_model.pipe.unet, [], pre=True) as batches:
        out = latents(tiny_model, options, style_images["red"])
    assert batches == [2, 2, 1, 1]  # the last half of the 4 steps without the unconditional batch
    assert (
        tiny_model.pipe.unet.__dict__["_instantstyle_context"].fills == 2
    )  # K/V again for the cond half only
    assert 0 < rel_l2(out, ref) < CFG_BOUND
    img, _ = image(tiny_model, options, style_images["red"])
    assert '"cfg_truncation": 0.5' in img.info["instantstyle"]  # the output says it is an approximation


def test_deepcache_reuses_deep_features_between_full_steps(tiny_model, style_images):
    assert all(
        o.deepcache_interval == 0 for o in map(fast_path.options_for, ("exact", "max-tuned", "cfg-trunc"))
    )
    unet = tiny_model.pipe.unet
    ref = latents(tiny_model, fast_path.EXACT, style_images["red"])
    options = replace(fast_path.EXACT, deepcache_interval=2)
    with counting(unet.mid_block.resnets[0], []) as mid, counting(unet.up_blocks[-1], []) as last:
        out = latents(tiny_model, options, style_images["red"])
    assert (len(mid), len(last)) == (2, 4)  # deep blocks on steps 0 and 2; the shallow branch every step
    state = unet.__dict__["_instantstyle_deepcache_state"]
    assert (state.full_steps, state.cached_steps) == (2, 2)
    assert 0 < rel_l2(out, ref) < DEEPCACHE_BOUND
    # Graph path: one graph per phase (full, cached), no recapture for a new prompt.
    graphed = replace(options, cuda_graphs=True, fuse_qkv=True, light_inactive=True)
    cache = unet_graphs.graph_cache(unet, graphs.TracedCapture())
    try:
        g1 = latents(tiny_model, graphed, style_images["red"])
        assert cache.captures == 2
        g2 = latents(tiny_model, graphed, style_images["blue"], prompt="a dog")
        assert cache.captures == 2
    finally:
        unet_graphs.release_graphs(unet)
    assert (
        rel_l2(
            g1, latents(tiny_model, replace(options, cuda_graphs=False, fuse_qkv=True), style_images["red"])
        )
        < 1e-5
    )
    assert rel_l2(g2, latents(tiny_model, options, style_images["blue"], prompt="a dog")) < 1e-5
    assert [name for name, _ in deepcache.deep_blocks(unet)][0] == "down_blocks.1"


def test_named_speeds_and_companion_flags():
    for name in fast_path.SPEEDS[1:]:
        assert fast_path.options_for(name).exact == (name not in fast_path.APPROXIMATE_SPEEDS), name
    turbo = fast_path.options_for("turbo")
    assert turbo.fp8 and turbo.fp8_scaling == "row" and turbo.deepcache_interval == 2
    assert fast_path.options_for("max", cfg_truncation=0.3).cfg_truncation == 0.3
    assert fast_path.options_for("deepcache", deepcache_interval=0).exact
    for bad in (dict(cfg_truncation=1.0), dict(cfg_truncation=-0.1), dict(deepcache_interval=-1)):
        with pytest.raises(InstantStyleError, match="--cfg-truncation|--deepcache"):
            fast_path.options_for("max", **bad)
    from instantstyle.cli import build_parser

    args = build_parser().parse_args(
        [
            "generate",
            "--prompt",
            "x",
            "--style",
            "a.png",
            "--speed",
            "max-tuned",
            "--cfg-truncation",
            "0.3",
            "--deepcache",
            "3",
            "--compile-cache",
            "/tmp/c",
            "--out",
            "x.png",
        ]
    )
    assert (args.speed, args.cfg_truncation, args.deepcache_interval, args.compile_cache) == (
        "max-tuned",
        0.3,
        3,
        "/tmp/c",
    )
