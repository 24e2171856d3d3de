"""IP-Adapter Plus (a Resampler over ViT-H patch features, 16 tokens) on the tiny SDXL.

The tiny Plus adapter and ViT-H-shaped encoder are written by ``make-tiny`` in the h94 layout
(``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors``, ``models/image_encoder``) and loaded through
diffusers' own ``load_ip_adapter`` on both sides. Stock side: ``load_ip_adapter`` +
``set_ip_adapter_scale(<InstantStyle dict>)`` + ``ip_adapter_image``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import blocks
from instantstyle import fast as fast_path
from instantstyle.adapter import scoped_scales
from instantstyle.errors import InstantStyleError
from instantstyle.fast import graphs
from stock_diffusers import load_stock_vit_h

TOL = 2 / 255
STEPS = 2
BASE = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0, width=64, height=64)
STYLE = {"up": {"block_0": [0.0, 1.0, 0.0]}}


@pytest.fixture(scope="module")
def stock_plus(tiny_paths, plus_model):
    return load_stock_vit_h(tiny_paths, plus_model.feature_extractor)


def ours(model, **kw) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in model.generate(**{**BASE, **kw})])


def stock_run(pipe, **kw) -> np.ndarray:
    return pipe(
        prompt=BASE["prompt"],
        num_inference_steps=STEPS,
        guidance_scale=BASE["guidance"],
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        **kw,
    ).images


def test_plus_file_is_read_as_a_16_token_resampler(plus_model):
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    info = plus_model.adapter_info
    assert (info.kind, info.clip_dim, info.cross_dim, info.tokens, info.n_layers) == ("plus", 48, 64, 16, 17)
    (projection,) = plus_model.pipe.unet.encoder_hid_proj.image_projection_layers
    assert isinstance(projection, IPAdapterPlusImageProjection)  # built by diffusers' own loader
    assert plus_model.styles.features == "patch"


def test_style_preset_equals_stock_diffusers(stock_plus, plus_model, style_images):
    red, blue = str(style_images["red"]), str(style_images["blue"])
    stock_plus.set_ip_adapter_scale(STYLE)
    ref = stock_run(stock_plus, ip_adapter_image=Image.open(red))
    mine = ours(plus_model, style=[red], mode="style")
    assert np.abs(mine - ref).max() <= TOL
    # The check can fail: another style image, or another scale, moves the output far beyond it.
    assert np.abs(ours(plus_model, style=[blue], mode="style") - ref).max() > 10 * TOL
    assert np.abs(ours(plus_model, style=[red], mode="style", scale=2.0) - ref).max() > 10 * TOL


def test_concat_is_diffusers_multi_image_and_mean_is_positionwise(stock_plus, plus_model, style_images):
    red, blue = str(style_images["red"]), str(style_images["blue"])
    stock_plus.set_ip_adapter_scale(STYLE)
    ref = stock_run(stock_plus, ip_adapter_image=[[Image.open(red), Image.open(blue)]])  # 2 x 16 tokens
    concat = ours(plus_model, style=[red, blue], style_combine="concat")
    assert np.abs(concat - ref).max() <= TOL
    mean = ours(plus_model, style=[red, blue])
    assert np.abs(mean - concat).max() > 10 * TOL
    only_red = ours(plus_model, style=[red])
    assert np.abs(ours(plus_model, style=[red, blue], style_weights=[1.0, 0.0]) - only_red).max() <= 1e-6


def test_embeds_are_penultimate_hidden_states_and_uncond_the_zero_image(stock_plus, plus_model, style_images):
    image = Image.open(style_images["red"])
    with torch.no_grad():
        cond, uncond = stock_plus.encode_image(image, "cpu", 1, output_hidden_states=True)  # [1, 257, 48]
    prep = plus_model.prepare(plus_model.request(prompt="a cat", style=[str(style_images["red"])]))
    (embeds,) = prep.ip_embeds
    assert embeds.shape == (2, 1, 257, 48)
    assert torch.allclose(embeds[1, 0], cond[0], atol=1e-5) and torch.allclose(
        embeds[0, 0], uncond[0], atol=1e-5
    )
    assert uncond.abs().max() > 0.1  # the zero image's features, not zeros


def _attn_modules(unet):
    return {n: m for n, m in unet.named_modules() if type(m).__name__ == "Attention"}


def test_hook_only_the_style_block_depends_on_the_style_image(plus_model, style_images):
    """One UNet call recorded with style A; every attention module re-run on exactly its inputs with
    B's 16 image tokens: only the style block's cross-attention outputs change."""
    unet = plus_model.pipe.unet
    req = plus_model.request(**{**BASE, "steps": 1}, style=[str(style_images["red"])], mode="style")
    prep_a = plus_model.prepare(req)
    prep_b = plus_model.prepare(req.model_copy(update={"style": [str(style_images["blue"])]}))
    with torch.no_grad():
        tokens_b = unet.encoder_hid_proj(prep_b.ip_embeds)  # [2, 1, 16, 64]
    assert tokens_b[0].shape[-2] == 16
    modules = _attn_modules(unet)
    seen = {}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs, name=n: seen.setdefault(name, (args, kwargs)), with_kwargs=True
        )
        for n, m in modules.items()
    ]
    try:
        plus_model.run(plus_model.pipe, prep_a, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(modules)
    changed = set()
    with scoped_scales(unet, prep_a.scales), torch.no_grad():
        for name, module in modules.items():
            args, kwargs = seen[name]
            context = kwargs.get("encoder_hidden_states")
            if not isinstance(context, tuple):  # self-attention: no image tokens at all
                continue
            text = context[0]
            out_a = module(*args, **kwargs)
            swapped = (text, [t[: text.shape[0]] for t in tokens_b])
            out_b = module(*args, **{**kwargs, "encoder_hidden_states": swapped})
            if not torch.equal(out_a, out_b):
                changed.add(name.split(".transformer_blocks")[0])
                assert (out_a - out_b).abs().max() > 1e-3
    active = set(blocks.active_modules(plus_model.modules, prep_a.scales[0]))
    assert changed == active and len(active) == 1


def test_content_subtraction_with_plus_is_a_one_line_error(style_images, tmp_path, capsys):
    from instantstyle.cli import main

    out = tmp_path / "never.png"
    argv = ["generate", "--base", "tiny", "--adapter", "tiny-plus", "--style", str(style_images["red"])]
    argv += ["--prompt", "a cat", "--content-prompt", "a dog", "--steps", "1", "--out", str(out)]
    code = main([*argv, "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert len(err.splitlines()) == 1 and "does not apply to an IP-Adapter Plus" in err
    assert "ip-adapter_sdxl" in err and "--negative-style" in err  # the two alternatives


@contextlib.contextmanager
def speed(model, options):
    saved = model.speed
    model.speed = fast_path.options_for(options)
    try:
        yield
    finally:
        model.speed = saved


def test_fast_paths_carry_the_16_token_branches(plus_model, style_images):
    """``--speed exact`` (FastAttention on the active layers) and the uniform slot structure of
    ``--speed graphs``/``max`` (every IP layer keeps a branch per slot, padded by ``fixed_slots``;
    eager here: no CUDA) give the plain picture with 16-token branches, precise mode's extra slot included."""
    red, blue = str(style_images["red"]), str(style_images["blue"])
    with speed(plus_model, "plain"):
        plain = ours(plus_model, style=[red], mode="precise")
    with speed(plus_model, "exact"):
        exact = ours(plus_model, style=[red], mode="precise")
    with speed(plus_model, fast_path.FastOptions(cuda_graphs=True, fuse_qkv=True)):
        assert fast_path.uniform_ip(plus_model.speed)
        uniform = ours(plus_model, style=[red])
        uniform_blue = ours(plus_model, style=[blue])
    with speed(plus_model, "plain"):
        plain_style = ours(plus_model, style=[red])
    assert np.abs(exact - plain).max() <= TOL and np.abs(uniform - plain_style).max() <= TOL
    assert np.abs(uniform_blue - uniform).max() > 10 * TOL


def test_graph_context_names_the_adapter_kind(plus_model, tiny_model):
    """The projection's modules (their classes) are part of every graph's context."""
    plus_proj = tuple(plus_model.pipe.unet.encoder_hid_proj.modules())
    basic_proj = tuple(tiny_model.pipe.unet.encoder_hid_proj.modules())

    def kinds(key):
        return {entry[1].__name__ for entry in key if len(entry) == 2 and isinstance(entry[1], type)}

    plus_key, basic_key = graphs.modules_key(plus_proj), graphs.modules_key(basic_proj)
    assert "IPAdapterPlusImageProjection" in kinds(plus_key) - kinds(basic_key)
    assert "ImageProjection" in kinds(basic_key) - kinds(plus_key)


def _mask(tmp_path, name, left: bool, size: int = 64) -> str:
    a = np.zeros((size, size), dtype=np.uint8)
    if left:
        a[:, : size // 2] = 255
    else:
        a[:, size // 2 :] = 255
    Image.fromarray(a).save(tmp_path / name)
    return str(tmp_path / name)


def test_leakage_controls_and_regions_apply_to_patch_features(plus_model, style_images, tmp_path):
    red, blue, green = (str(style_images[k]) for k in ("red", "blue", "green"))
    plain = ours(plus_model, style=[red])
    variants = {
        "negative": dict(negative_style=blue),
        "composition": dict(composition=green),
        "window": dict(style_window=(0.5, 1.0)),
        "regions": dict(
            style=[red, blue], style_masks=[_mask(tmp_path, "l.png", True), _mask(tmp_path, "r.png", False)]
        ),
    }
    for name, params in variants.items():
        out = ours(plus_model, **{"style": [red], **params})
        assert np.abs(out - plain).max() > 10 * TOL, name
    # scale 0 on the negative image is the plain unconditional branch (the zero image's features)
    assert (
        np.abs(ours(plus_model, style=[red], negative_style=blue, negative_style_scale=0.0) - plain).max()
        <= 1e-6
    )


@pytest.mark.parametrize("task", ["controlnet", "img2img", "inpaint", "plus"])
def test_content_tasks_run_with_plus(plus_model, style_images, tiny_paths, tmp_path, task):
    params = dict(content=str(style_images["green"]), task=task, steps=1 if task == "plus" else 2)
    if task in ("controlnet", "plus"):
        kind = "canny" if task == "controlnet" else "tile"
        params["control"] = [f"{kind}={tiny_paths['controlnet_' + kind]}"]
    if task == "inpaint":
        params["mask"] = _mask(tmp_path, "m.png", left=True, size=80)  # the content image's size
    red = ours(plus_model, style=[str(style_images["red"])], **params)
    blue = ours(plus_model, style=[str(style_images["blue"])], **params)
    assert np.abs(red - blue).max() > 10 * TOL  # the 16-token style reaches the picture


def test_saved_global_style_is_refused_by_a_plus_model(plus_model, tiny_model, style_images, tmp_path):
    from instantstyle import embeddings

    style = tiny_model.encode_style([str(style_images["red"])])
    style.encoder_id = plus_model.styles.encoder_id
    embeddings.save_style(style, "flat", tmp_path)
    plus_model.styles.styles_directory = tmp_path
    try:
        with pytest.raises(InstantStyleError, match="holds global image features .* reads patch"):
            plus_model.encode_style(["@flat"])
    finally:
        plus_model.styles.styles_directory = None


def test_adapter_training_refuses_a_plus_init(plus_model, tiny_paths):
    from instantstyle import adapter
    from instantstyle.training import layers

    init = adapter.load_state_dict(tiny_paths["plus_adapter"])
    with pytest.raises(InstantStyleError, match="adapter training trains the global ImageProjection"):
        layers.initial_weights(plus_model.pipe.unet, [], 48, 16, init, 0)
