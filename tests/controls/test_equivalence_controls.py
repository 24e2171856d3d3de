"""Composition image and step window equal stock diffusers where diffusers can express them.

Stock side: the same files through diffusers' own loaders. A composition image is diffusers'
"two IP inputs with per-block scale dicts" (the InstantStyle README's style + layout example: the
adapter loaded twice, ``set_ip_adapter_scale([layout_dict, style_dict])``); the window ``0:K/N``
is ``IPAdapterScaleCutoffCallback(cutoff_step_index=K-1)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stock_diffusers import load_stock_sdxl

TOL = 2 / 255
STEPS = 4
STYLE = {"up": {"block_0": [0.0, 1.0, 0.0]}}
LAYOUT = {"down": {"block_2": [0.0, 1.0]}}


def stock_run(pipe, **kw):
    return pipe(
        prompt="a cat",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        **kw,
    ).images


def ours(model, **kw):
    params = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0) | kw
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in model.generate(**params)])


@pytest.fixture(scope="module")
def stock_two(tiny_paths, tiny_model):
    """Stock SDXL with the tiny adapter loaded twice (diffusers' multi-adapter inputs)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths["base"]))
    folder = str(tiny_paths["adapter"].parent.parent)
    pipe.load_ip_adapter(
        [folder, folder],
        subfolder=["sdxl_models"] * 2,
        weight_name=["ip-adapter_sdxl.safetensors"] * 2,
        image_encoder_folder="image_encoder",
    )
    pipe.feature_extractor = tiny_model.feature_extractor
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_composition_equals_two_stock_ip_inputs(stock_two, tiny_model, style_images):
    red, blue = Image.open(style_images["red"]), Image.open(style_images["blue"])
    stock_two.set_ip_adapter_scale([STYLE, LAYOUT])
    ref = stock_run(stock_two, ip_adapter_image=[red, blue])
    mine = ours(tiny_model, style=[str(style_images["red"])], composition=str(style_images["blue"]))
    assert np.abs(mine - ref).max() <= TOL
    # Visible: the composition image moves the picture far beyond the tolerance.
    alone = ours(tiny_model, style=[str(style_images["red"])])
    assert np.abs(alone - ref).max() > 10 * TOL
    # --composition-scale is the layout dict's value.
    stock_two.set_ip_adapter_scale([STYLE, {"down": {"block_2": [0.0, 0.5]}}])
    half = stock_run(stock_two, ip_adapter_image=[red, blue])
    mine = ours(
        tiny_model,
        style=[str(style_images["red"])],
        composition=str(style_images["blue"]),
        composition_scale=0.5,
    )
    assert np.abs(mine - half).max() <= TOL and np.abs(half - ref).max() > 10 * TOL


@pytest.fixture(scope="module")
def stock(tiny_paths, tiny_model):
    return load_stock_sdxl(tiny_paths, tiny_model.feature_extractor)


def test_window_from_zero_equals_ip_adapter_scale_cutoff_callback(stock, tiny_model, style_images):
    from diffusers.callbacks import IPAdapterScaleCutoffCallback

    kept = 1  # on the tiny model only the early steps move the picture far beyond the tolerance
    strong = {"up": {"block_0": [0.0, 6.0, 0.0]}}
    stock.set_ip_adapter_scale(strong)
    red = Image.open(style_images["red"])
    full = stock_run(stock, ip_adapter_image=red)
    ref = stock_run(
        stock,
        ip_adapter_image=red,
        callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=kept - 1),
    )  # steps 0..kept-1 keep the adapter
    stock.set_ip_adapter_scale(strong)  # the callback leaves the pipeline at scale 0
    mine = ours(tiny_model, style=[str(style_images["red"])], scale=6.0, style_window=(0.0, kept / STEPS))
    assert np.abs(mine - ref).max() <= TOL
    assert np.abs(full - ref).max() > 5 * TOL  # the cut is visible
    off = ours(tiny_model, style=[str(style_images["red"])], scale=0.0)
    assert np.abs(off - ref).max() > 10 * TOL  # and so is what the window kept


@pytest.mark.parametrize(
    ("steps", "kept", "scale", "visible"),
    [
        (4, 2, 6.0, 5 * TOL),  # 0:1/2: the cut moves the picture by 16/255
        (8, 6, 10.0, 1.5 * TOL),  # 0:3/4: 4.5/255; the tiny model's last quarter moves little at any scale
    ],
)
def test_later_window_ends_equal_the_cutoff_callback(
    stock, tiny_model, style_images, steps, kept, scale, visible
):
    """``0:K/N`` for later ends, with the reference in every block (``--mode full``, stock's
    uniform scale) so that the steps after the cut still move the picture beyond the tolerance."""
    from diffusers.callbacks import IPAdapterScaleCutoffCallback

    red = Image.open(style_images["red"])
    kw = dict(prompt="a cat", num_inference_steps=steps, guidance_scale=5.0, output_type="np")
    stock.set_ip_adapter_scale(scale)
    full = stock(generator=torch.Generator("cpu").manual_seed(0), ip_adapter_image=red, **kw).images
    ref = stock(
        generator=torch.Generator("cpu").manual_seed(0),
        ip_adapter_image=red,
        **kw,
        callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=kept - 1),
    ).images
    stock.set_ip_adapter_scale(scale)  # the callback leaves the pipeline at scale 0
    mine = ours(
        tiny_model,
        style=[str(style_images["red"])],
        mode="full",
        scale=scale,
        steps=steps,
        style_window=(0.0, kept / steps),
    )
    assert np.abs(mine - ref).max() <= TOL
    assert np.abs(full - ref).max() > visible  # the cut is visible: a window that ignored it would fail
