"""InstantStyle-Plus: the second adapter shares every weight with the first and is gone afterwards;
style and content images both matter."""

from __future__ import annotations

import numpy as np


def state(unet):
    from instantstyle.adapter import ip_processors

    procs = ip_processors(unet)
    return (
        {n: (list(p.scale), len(p.to_k_ip), list(p.num_tokens)) for n, p in procs.items()},
        len(unet.encoder_hid_proj.image_projection_layers),
    )


def test_shared_second_adapter_costs_no_weights_and_is_scoped(tiny_model):
    from instantstyle.adapter import ip_processors
    from instantstyle.pipelines.t6_plus import shared_second_adapter

    unet = tiny_model.pipe.unet
    before, n_params = state(unet), sum(p.numel() for p in unet.parameters())
    with shared_second_adapter(unet):
        for proc in ip_processors(unet).values():
            assert proc.to_k_ip[1] is proc.to_k_ip[0] and proc.to_v_ip[1] is proc.to_v_ip[0]
            assert proc.scale[1] == 0.0
        assert sum(p.numel() for p in unet.parameters()) == n_params  # nothing loaded twice
    assert state(unet) == before


def test_plus_style_and_content_adapter_matter(tiny_model, tiny_paths, style_images, content_images):
    before = state(tiny_model.pipe.unet)

    def plus(style, **kw):
        params = (
            dict(
                prompt="a box",
                task="plus",
                content=str(content_images["content"]),
                steps=1,
                seed=0,
                style=[str(style)],
                control=[f"tile={tiny_paths['controlnet_tile']}"],
            )
            | kw
        )
        return np.asarray(tiny_model.generate(**params)[0], dtype=np.float32) / 255

    red = plus(style_images["red"])
    assert np.abs(plus(style_images["blue"]) - red).max() > 20 / 255  # the style image matters
    assert (
        np.abs(plus(style_images["red"], content_ip_scale=0.0) - red).max() > 20 / 255
    )  # so does the content one
    assert state(tiny_model.pipe.unet) == before  # the model is left exactly as found


def test_plus_sizes_as_the_authors_resize_img():
    from instantstyle.sizes import plus_size

    assert plus_size(1920, 1080) == (1280, 704)  # 16:9
    assert plus_size(1600, 1200) == (1280, 960)  # 4:3
    assert plus_size(1080, 1920) == (704, 1280)
    assert plus_size(1000, 1000) == (1280, 1280)  # the long side always goes to 1280
    assert plus_size(96, 64, 64, 80, 16) == (80, 48)  # scaled to the tiny model


def test_plus_inverts_and_generates_on_the_same_timesteps(
    tiny_model, tiny_paths, style_images, content_images
):
    """Hook on the UNet: the inversion's calls (batch 1, guidance 1) and the generation's (batch 2, CFG)."""
    seen = []
    hook = tiny_model.pipe.unet.register_forward_pre_hook(
        lambda _m, args, _kw: seen.append((args[0].shape[0], int(args[1]))), with_kwargs=True
    )
    try:
        tiny_model.generate(
            prompt="a box",
            task="plus",
            content=str(content_images["content"]),
            steps=3,
            seed=0,
            style=[str(style_images["red"])],
            control=[f"tile={tiny_paths['controlnet_tile']}"],
        )
    finally:
        hook.remove()
    inversion = [t for b, t in seen if b == 1]
    generation = [t for b, t in seen if b == 2]
    assert len(generation) == 3 and len(inversion) >= 3  # ReNoise: several calls per inversion step
    assert sorted(set(inversion)) == sorted(generation)


def test_plus_refuses_inversion_steps_that_differ_from_the_steps(content_images):
    import pytest

    from instantstyle.config import make_request
    from instantstyle.errors import InstantStyleError

    base = dict(prompt="a", task="plus", content=str(content_images["content"]), style=["s.png"])
    assert make_request(**base, steps=30, inversion_steps=30).inversion_steps == 30
    with pytest.raises(
        InstantStyleError,
        match="inversion_steps 30 differs from steps 50: the generation must "
        "retrace the inversion's timesteps",
    ):
        make_request(**base, inversion_steps=30)


def test_plus_ddim_inversion_is_selectable_and_differs_from_renoise(
    tiny_model, tiny_paths, style_images, content_images
):
    params = dict(
        prompt="a box",
        task="plus",
        content=str(content_images["content"]),
        steps=2,
        seed=0,
        style=[str(style_images["red"])],
        control=[f"tile={tiny_paths['controlnet_tile']}"],
    )
    renoise = np.asarray(tiny_model.generate(**params)[0], dtype=np.float32)
    ddim = np.asarray(tiny_model.generate(**params, inversion="ddim")[0], dtype=np.float32)
    assert np.abs(renoise - ddim).max() > 2


def test_plus_runs_with_the_authors_global_vit_h_adapter(tiny_paths, content_images, style_images):
    """The authors' pair (ip-adapter_sdxl_vit-h + models/image_encoder, 1024-d instead of bigG's 1280):
    here the tiny one (24-d), named by reference; the adapter implies its ViT-H encoder."""
    from instantstyle import InstantStyle

    model = InstantStyle.from_pretrained(
        str(tiny_paths["base"]), "tiny-vit-h", device="cpu", dtype="fp32", cache_dir=None, progress=False
    )
    assert model.adapter_info.kind == "basic" and model.adapter_info.clip_dim == 24
    assert model.ids["image_encoder"] == "tiny-vit-h"
    params = dict(
        prompt="a box",
        task="plus",
        content=str(content_images["content"]),
        steps=1,
        seed=0,
        control=[f"tile={tiny_paths['controlnet_tile']}"],
    )
    red = np.asarray(model.generate(**params, style=[str(style_images["red"])])[0], dtype=np.float32)
    blue = np.asarray(model.generate(**params, style=[str(style_images["blue"])])[0], dtype=np.float32)
    assert red.shape == (80, 80, 3) and np.abs(red - blue).max() > 20  # both adapters run on it
