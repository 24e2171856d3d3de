"""The baselines on the tiny model: they run, patch only what they should, and restore the model."""

from __future__ import annotations

import pytest
import torch

from instantstyle import blocks
from instantstyle.errors import InstantStyleError
from instantstyle.testing.state import assert_same, snapshot

FAST = dict(steps=2, width=64, height=64, seed=7, guidance=3.0)
REF = dict(reference_prompt="a red square")


@pytest.mark.parametrize("method, extra", [("ip-adapter", {}), ("style-aligned", {**REF, "share_group_norm": True,
                                                                                   "shared_score_shift": 0.69}),
                                           ("visual-style-prompting", REF)])
def test_method_runs_with_metadata_and_leaves_the_model_as_found(tiny_model, style_images, method, extra):
    import json

    before = snapshot(tiny_model)
    images = tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], method=method, **FAST, **extra)
    assert_same(before, snapshot(tiny_model))
    assert len(images) == 1 and images[0].size == (64, 64)
    meta = json.loads(images[0].info["instantstyle"])
    assert meta["method"] == method and meta["seed"] == 7
    if method != "ip-adapter":
        assert meta["scheduler"] == "ddim" and len(meta["style_image_sha256"]) == 1


def test_ip_adapter_method_is_the_full_preset(tiny_model, style_images):
    import numpy as np

    one = {**FAST, "steps": 1}
    a = tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], method="ip-adapter", **one)[0]
    b = tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], mode="full", **one)[0]
    c = tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], mode="style", **one)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a, dtype=float) - np.asarray(c, dtype=float)).max() > 2  # the method matters


def _patched_layers_during(tiny_model, style_images, **params):
    """Names of the attn1 layers that ran a patch processor during one generation (forward pre-hooks)."""
    from instantstyle.methods.processors import SelfAttentionPatch

    unet, seen = tiny_model.pipe.unet, set()
    attn1 = {n: m for n, m in unet.named_modules() if n.endswith(".attn1")}
    hooks = [m.register_forward_pre_hook(lambda mod, _a, n=n: seen.add(n) if isinstance(mod.processor, SelfAttentionPatch)
                                         else None) for n, m in attn1.items()]
    try:
        tiny_model.generate(prompt="a cat", style=[str(style_images["red"])], **{**FAST, "steps": 1}, **params)
    finally:
        for h in hooks:
            h.remove()
    return seen, attn1


def test_style_aligned_patches_every_self_attention_layer_by_default(tiny_model, style_images):
    seen, attn1 = _patched_layers_during(tiny_model, style_images, method="style-aligned", **REF)
    assert seen == set(attn1) and len(seen) == sum(m.layers for m in tiny_model.modules)


def test_style_aligned_layer_count_matches_the_configured_set(tiny_model, style_images):
    seen, _ = _patched_layers_during(tiny_model, style_images, method="style-aligned",
                                     attention_layers="up_blocks.0,down_blocks.1.attentions.0", **REF)
    expected = {f"{m.layer_name(i)}.attn1" for m in tiny_model.modules for i in range(m.layers)
                if m.block == "up_blocks.0" or m.name == "down_blocks.1.attentions.0"}
    assert seen == expected and len(seen) == 3 * 2 + 1  # tiny: up_blocks.0 has 3 modules x 2 layers


def test_visual_style_prompting_default_layers_are_up_blocks_1(tiny_model, style_images):
    seen, _ = _patched_layers_during(tiny_model, style_images, method="visual-style-prompting", **REF)
    assert seen == set(blocks.self_attention_layers(tiny_model.modules, blocks.VSP_LAYERS))
    assert seen and all(n.startswith("up_blocks.1.") for n in seen)


def _unet_inputs(model, latents):
    from instantstyle.inversion import sdxl_added_cond

    pe, added = sdxl_added_cond(model.pipe, "a cat", None, 64, 64, guidance=1.0)
    n = latents.shape[0]
    added = {k: ([t.expand(n, *t.shape[1:]) for t in v] if isinstance(v, list) else v.expand(n, *v.shape[1:]))
             for k, v in added.items()}
    return dict(sample=latents, timestep=torch.tensor(500), encoder_hidden_states=pe.expand(n, -1, -1),
                added_cond_kwargs=added)


def _patch(model, method, layers, group):
    from instantstyle.methods import _common
    from instantstyle.methods.attention import shared_attention, swapped_attention
    from instantstyle.methods.processors import PatchState, SelfAttentionPatch

    fn = swapped_attention if method == "vsp" else shared_attention
    state = PatchState(group)
    return _common.scoped_processors(model.pipe.unet, {n: SelfAttentionPatch(fn, state) for n in layers})


def test_swapping_changes_only_the_configured_layers(tiny_model):
    """Hook test: each attn1 layer's output vs stock attention on the same input, in one UNet pass."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = tiny_model.pipe.unet
    layers = blocks.self_attention_layers(tiny_model.modules, ["up_blocks.1.attentions.1"])
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=g)  # [reference, target]: different images
    changed, stock = {}, AttnProcessor2_0()

    def hook(module, args, kwargs, output, name):
        expected = stock(module, args[0] if args else kwargs["hidden_states"])
        changed[name] = ((output - expected).abs().amax(dim=(1, 2)))  # per row

    handles = [m.register_forward_hook(lambda mod, a, kw, out, n=n: hook(mod, a, kw, out, n), with_kwargs=True)
               for n, m in unet.named_modules() if n.endswith(".attn1")]
    try:
        with _patch(tiny_model, "vsp", layers, group=2), torch.no_grad():
            unet(**_unet_inputs(tiny_model, latents))
    finally:
        for h in handles:
            h.remove()
    differs = {n for n, d in changed.items() if d[1] > 1e-4}
    assert differs == set(layers) and len(layers) == 1  # tiny: one transformer layer per up_blocks.1 module
    assert all(changed[n][0] < 1e-5 for n in layers)  # the reference row is never changed
    assert all(d.max() < 1e-5 for n, d in changed.items() if n not in layers)


@pytest.mark.parametrize("method", ["vsp", "style-aligned"])
def test_reference_equal_to_target_is_a_no_op(tiny_model, method):
    unet = tiny_model.pipe.unet
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    inputs = _unet_inputs(tiny_model, torch.cat([x, x]))
    layers = blocks.self_attention_layers(tiny_model.modules, ["*"])
    with torch.no_grad():
        plain = unet(**inputs).sample
        with _patch(tiny_model, method, layers, group=2):
            patched = unet(**inputs).sample
        other = _unet_inputs(tiny_model, torch.cat([x, torch.randn_like(x)]))
        with _patch(tiny_model, method, layers, group=2):
            mixed = unet(**other).sample
        mixed_plain = unet(**other).sample
    assert (patched - plain).abs().max() < 1e-5
    assert (mixed - mixed_plain)[0].abs().max() < 1e-5  # reference row unaffected
    assert (mixed - mixed_plain)[1].abs().max() > 1e-2  # a different reference does change the target


def test_pixel_methods_refuse_saved_styles_and_several_images(tiny_model, style_images):
    with pytest.raises(InstantStyleError, match="exactly one style image"):
        tiny_model.generate(prompt="a", style=[str(style_images["red"]), str(style_images["blue"])],
                            method="visual-style-prompting", **FAST, **REF)
    with pytest.raises(InstantStyleError, match="saved style"):
        tiny_model.generate(prompt="a", style=["@mine"], method="style-aligned", **FAST, **REF)


def test_unknown_attention_layer_lists_valid_names(tiny_model, style_images):
    with pytest.raises(InstantStyleError, match="unknown block 'up_blocks.7'.*valid names"):
        tiny_model.generate(prompt="a", style=[str(style_images["red"])], method="style-aligned",
                            attention_layers="up_blocks.7", **FAST, **REF)


def test_cli_unknown_method_fails_before_loading_models(tmp_path, capsys, style_images):
    from instantstyle.cli import main

    rc = main(["generate", "--base", str(tmp_path / "no-such-model"), "--style", str(style_images["red"]),
               "--prompt", "a", "--method", "stylealigned", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "valid methods: instantstyle, ip-adapter, style-aligned, visual-style-prompting, b-lora" in err
    assert err.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_cli_b_lora_without_lora_is_a_clear_error(tmp_path, capsys):
    from instantstyle.cli import main

    rc = main(["generate", "--base", "tiny", "--prompt", "a", "--method", "b-lora", "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "--method b-lora needs --lora DIR" in capsys.readouterr().err
