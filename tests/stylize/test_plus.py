"""InstantStyle-Plus: the second adapter shares every weight with the first and is gone afterwards;
style and content images both matter."""

from __future__ import annotations

import numpy as np


def state(unet):
    from instantstyle.adapter import ip_processors

    procs = ip_processors(unet)
    return ({n: (list(p.scale), len(p.to_k_ip), list(p.num_tokens)) for n, p in procs.items()},
            len(unet.encoder_hid_proj.image_projection_layers))


def test_shared_second_adapter_costs_no_weights_and_is_scoped(tiny_model):
    from instantstyle.adapter import ip_processors
    from instantstyle.pipelines.stylize import shared_second_adapter

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
        params = dict(prompt="a box", task="plus", content=str(content_images["content"]), steps=1, seed=0,
                      style=[str(style)], control=[f"tile={tiny_paths['controlnet_tile']}"]) | kw
        return np.asarray(tiny_model.generate(**params)[0], dtype=np.float32) / 255

    red = plus(style_images["red"])
    assert np.abs(plus(style_images["blue"]) - red).max() > 20 / 255  # the style image matters
    assert np.abs(plus(style_images["red"], content_ip_scale=0.0) - red).max() > 20 / 255  # so does the content one
    assert state(tiny_model.pipe.unet) == before  # the model is left exactly as found
