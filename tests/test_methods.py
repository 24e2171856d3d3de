"""The baselines on the tiny model: they run, patch only what they should, and restore the model."""

from __future__ import annotations

import pytest
import torch

from instantstyle import blocks
from instantstyle.errors import InstantStyleError
from instantstyle.testing.state import assert_same, snapshot

FAST = dict(steps=2, width=64, height=64, seed=7, guidance=3.0)
REF = dict(reference_prompt="a red square")


@pytest.mark.parametrize(
    "method, extra",
    [
        ("ip-adapter", {}),
        ("style-aligned", {**REF, "share_group_norm": True, "shared_score_shift": 0.69}),
        ("visual-style-prompting", REF),
    ],
)
def test_method_runs_with_metadata_and_leaves_the_model_as_found(tiny_model, style_images, method, extra):
    import json

    before = snapshot(tiny_model)
    images = tiny_model.generate(
        prompt="a cat", style=[str(style_images["red"])], method=method, **FAST, **extra
    )
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
    from instantstyle.processors.self_attention import SelfAttentionPatch

    unet, seen = tiny_model.pipe.unet, set()
    attn1 = {n: m for n, m in unet.named_modules() if n.endswith(".attn1")}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, _a, n=n: seen.add(n) if isinstance(mod.processor, SelfAttentionPatch) else None
        )
        for n, m in attn1.items()
    ]
    try:
        tiny_model.generate(
            prompt="a cat", style=[str(style_images["red"])], **{**FAST, "steps": 1}, **params
        )
    finally:
        for h in hooks:
            h.remove()
    return seen, attn1


def test_style_aligned_patches_every_self_attention_layer_by_default(tiny_model, style_images):
    seen, attn1 = _patched_layers_during(tiny_model, style_images, method="style-aligned", **REF)
    assert seen == set(attn1) and len(seen) == sum(m.layers for m in tiny_model.modules)


def test_style_aligned_layer_count_matches_the_configured_set(tiny_model, style_images):
    seen, _ = _patched_layers_during(
        tiny_model,
        style_images,
        method="style-aligned",
        attention_layers="up_blocks.0,down_blocks.1.attentions.0",
        **REF,
    )
    expected = {
        f"{m.layer_name(i)}.attn1"
        for m in tiny_model.modules
        for i in range(m.layers)
        if m.block == "up_blocks.0" or m.name == "down_blocks.1.attentions.0"
    }
    assert seen == expected and len(seen) == 3 * 2 + 1  # tiny: up_blocks.0 has 3 modules x 2 layers


def test_visual_style_prompting_default_layers_are_up_blocks_1(tiny_model, style_images):
    seen, _ = _patched_layers_during(tiny_model, style_images, method="visual-style-prompting", **REF)
    assert seen == set(blocks.self_attention_layers(tiny_model.modules, blocks.VSP_LAYERS))
    assert seen and all(n.startswith("up_blocks.1.") for n in seen)


def _unet_inputs(model, latents):
    from instantstyle.inversion import sdxl_added_cond

    pe, added = sdxl_added_cond(model.pipe, "a cat", None, 64, 64, guidance=1.0)
    n = latents.shape[0]
    added = {
        k: ([t.expand(n, *t.shape[1:]) for t in v] if isinstance(v, list) else v.expand(n, *v.shape[1:]))
        for k, v in added.items()
    }
    return dict(
        sample=latents,
        timestep=torch.tensor(500),
        encoder_hidden_states=pe.expand(n, -1, -1),
        added_cond_kwargs=added,
    )


def _patch(model, method, layers, group):
    from instantstyle.processors.maths import shared_attention, swapped_attention
    from instantstyle.processors.scoped import scoped_processors
    from instantstyle.processors.self_attention import PatchState, SelfAttentionPatch

    fn = swapped_attention if method == "vsp" else shared_attention
    state = PatchState(group)
    return scoped_processors(model.pipe.unet, {n: SelfAttentionPatch(fn, state) for n in layers})


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
        changed[name] = (output - expected).abs().amax(dim=(1, 2))  # per row

    handles = [
        m.register_forward_hook(lambda mod, a, kw, out, n=n: hook(mod, a, kw, out, n), with_kwargs=True)
        for n, m in unet.named_modules()
        if n.endswith(".attn1")
    ]
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
        tiny_model.generate(
            prompt="a",
            style=[str(style_images["red"]), str(style_images["blue"])],
            method="visual-style-prompting",
            **FAST,
            **REF,
        )
    with pytest.raises(InstantStyleError, match="saved style"):
        tiny_model.generate(prompt="a", style=["@mine"], method="style-aligned", **FAST, **REF)


def test_unknown_attention_layer_lists_valid_names(tiny_model, style_images):
    with pytest.raises(InstantStyleError, match="unknown block 'up_blocks.7'.*valid names"):
        tiny_model.generate(
            prompt="a",
            style=[str(style_images["red"])],
            method="style-aligned",
            attention_layers="up_blocks.7",
            **FAST,
            **REF,
        )


def test_cli_unknown_method_fails_before_loading_models(tmp_path, capsys, style_images):
    from instantstyle.cli import main

    rc = main(
        [
            "generate",
            "--base",
            str(tmp_path / "no-such-model"),
            "--style",
            str(style_images["red"]),
            "--prompt",
            "a",
            "--method",
            "stylealigned",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "valid methods: instantstyle, ip-adapter, style-aligned, visual-style-prompting, b-lora" in err
    )
    assert err.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_cli_b_lora_without_lora_is_a_clear_error(tmp_path, capsys):
    from instantstyle.cli import main

    rc = main(
        [
            "generate",
            "--base",
            "tiny",
            "--prompt",
            "a",
            "--method",
            "b-lora",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2 and "--method b-lora needs --b-lora DIR" in capsys.readouterr().err


def _unet_calls(tiny_model, **params):
    """(encoder_hidden_states, sample, timestep) of every UNet call during one generation."""
    calls = []
    hook = tiny_model.pipe.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(
            (kwargs["encoder_hidden_states"].clone(), args[0].clone(), int(args[1]))
        ),
        with_kwargs=True,
    )
    try:
        tiny_model.generate(prompt="a cat", **params)
    finally:
        hook.remove()
    return calls


def test_vsp_reference_row_gets_the_null_prompt_and_fresh_noise_each_step(tiny_model, style_images):
    from instantstyle.inversion import ddim_scheduler, encode_latents

    pipe = tiny_model.pipe
    calls = _unet_calls(
        tiny_model,
        style=[str(style_images["red"])],
        method="visual-style-prompting",
        negative_prompt="blurry",
        **{**FAST, "steps": 3},
        **REF,
    )
    assert len(calls) == 3 and all(c[0].shape[0] == 4 for c in calls)  # [ref, target] x [uncond, cond]
    ref_pe, null, _, _ = pipe.encode_prompt("a red square", device="cpu", do_classifier_free_guidance=True)
    tgt_neg = pipe.encode_prompt(
        "a cat", device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry"
    )[1]
    text = calls[0][0]
    assert torch.equal(text[0], null[0])  # unconditional reference row: the null prompt
    assert not torch.equal(text[0], ref_pe[0])  # (the reference prompt would be visible)
    assert torch.equal(text[2], ref_pe[0]) and torch.equal(
        text[1], tgt_neg[0]
    )  # the negative is the targets'
    # Re-noising: the noise inside the reference row differs between steps.
    z0 = encode_latents(pipe, __import__("PIL.Image").Image.open(style_images["red"]).convert("RGB"), 64, 64)
    sched = ddim_scheduler(pipe)
    eps = []
    for _text, sample, t in calls:
        a = sched.alphas_cumprod[t]
        eps.append((sample[0] - a.sqrt() * z0[0]) / (1 - a).sqrt())
    assert all((eps[i] - eps[i + 1]).abs().max() > 0.5 for i in range(2))
    assert all(0.5 < float(e.std()) < 1.5 for e in eps)  # each is a unit-variance draw


def test_method_guidance_defaults_apply_only_when_none_is_given():
    from instantstyle.config import make_request

    vsp = dict(prompt="a", method="visual-style-prompting", reference_prompt="r")
    assert make_request(**vsp).guidance == 7.0
    assert make_request(**vsp, guidance=3.0).guidance == 3.0
    assert make_request(prompt="a", method="style-aligned", reference_prompt="r").guidance == 10.0
    assert make_request(prompt="a").guidance == 5.0


def test_style_aligned_reference_row_starts_at_the_offset_step_of_its_inversion(tiny_model, style_images):
    from PIL import Image

    from instantstyle.inversion import ddim_invert
    from instantstyle.methods.style_aligned import INVERSION_GUIDANCE, default_offset

    assert default_offset(50) == 5 and default_offset(30) == 3 and default_offset(2) == 0
    steps, offset = 4, 2
    calls = _unet_calls(
        tiny_model,
        style=[str(style_images["red"])],
        method="style-aligned",
        **{**FAST, "steps": steps},
        inversion_offset=offset,
        **REF,
    )
    sampling = [c for c in calls if c[1].shape[0] == 4]  # [ref, target] x CFG; the inversion's batch is 2
    assert len(sampling) == steps
    ref = Image.open(style_images["red"]).convert("RGB")
    inv = ddim_invert(
        tiny_model.pipe,
        ref,
        REF["reference_prompt"],
        steps=steps,
        guidance=INVERSION_GUIDANCE,
        width=64,
        height=64,
        progress=False,
    )
    expected = [offset] + [max(offset + 1, i) for i in range(1, steps)]  # the authors' callback
    for i, (_text, sample, _t) in enumerate(sampling):
        assert torch.allclose(sample[0], inv.at_forward_step(expected[i])[0], atol=1e-6), i
        assert torch.equal(sample[0], sample[2])  # both CFG halves
    assert not torch.allclose(sampling[0][1][0], inv.noisy[0], atol=1e-3)  # offset 0 would start at x_T


def test_style_aligned_shares_group_norm_statistics_with_the_reference(tiny_model, style_images):
    import torch.nn.functional as F

    unet = tiny_model.pipe.unet
    name, norm = next(
        (n, m)
        for n, m in unet.named_modules()
        if n.startswith("up_blocks.1") and isinstance(m, torch.nn.GroupNorm)
    )
    seen = []

    def hook(mod, args, out):
        x = args[0]
        if x.shape[0] == 4:  # a sampling call: rows [ref, target] per CFG half
            seen.append((x.clone(), out.clone()))

    h = norm.register_forward_hook(hook)
    try:
        for share in (True, False):
            tiny_model.generate(
                prompt="a cat",
                style=[str(style_images["red"])],
                method="style-aligned",
                share_group_norm=share,
                **{**FAST, "steps": 1},
                **REF,
            )
    finally:
        h.remove()
    (x, shared), (x_plain, plain) = seen
    g = norm.num_groups
    with torch.no_grad():  # the hooked tensors are inference tensors
        for row, ref_row in ((1, 0), (3, 2)):  # each target normalised over [own | reference] features
            joint = torch.cat([x[row : row + 1], x[ref_row : ref_row + 1]], dim=-2)
            want = F.group_norm(joint, g, norm.weight, norm.bias, norm.eps)[..., : x.shape[-2], :]
            assert torch.allclose(shared[row : row + 1], want, atol=1e-5)
            own = F.group_norm(x[row : row + 1], g, norm.weight, norm.bias, norm.eps)
            assert (shared[row : row + 1] - own).abs().max() > 1e-3  # sharing is visible
        assert torch.allclose(plain, F.group_norm(x_plain, g, norm.weight, norm.bias, norm.eps), atol=1e-5)
    assert name
