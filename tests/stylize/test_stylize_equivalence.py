"""ControlNet, img2img and inpainting modes equal stock diffusers on the same weights and seed.

Stock side: pipelines loaded from the tiny files by diffusers itself (``from_pretrained`` +
``load_ip_adapter`` + ``set_ip_adapter_scale`` with InstantStyle's style-only dict +
``ip_adapter_image``), the ControlNet by ``ControlNetModel.from_pretrained``, Canny by OpenCV.
Each test also shows that the style image moves the output far beyond the tolerance.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

TOL = 2 / 255
STEPS = 2


def as_array(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])


def ours(model, style, **kw):
    params = dict(prompt="a cat", steps=STEPS, guidance=5.0, seed=0, style=[str(style)]) | kw
    return as_array(model.generate(**params))


def stock_call(pipe, style, **kw):
    return pipe(
        prompt="a cat",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(0),
        ip_adapter_image=Image.open(style),
        output_type="np",
        **kw,
    ).images


@pytest.fixture(scope="module")
def stock_canny(tiny_paths):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(tiny_paths["controlnet_canny"]))


def test_controlnet_equals_stock(
    stock_sdxl, stock_canny, tiny_model, tiny_paths, style_images, content_images
):
    from diffusers import StableDiffusionXLControlNetPipeline

    pipe = StableDiffusionXLControlNetPipeline.from_pipe(stock_sdxl, controlnet=stock_canny)
    gray = np.asarray(Image.open(content_images["content"]).convert("L"))
    edges = Image.fromarray(np.stack([cv2.Canny(gray, 50, 200)] * 3, -1))
    ref = stock_call(pipe, style_images["red"], image=edges, controlnet_conditioning_scale=0.6)
    control = [f"canny={tiny_paths['controlnet_canny']}"]
    mine = ours(tiny_model, style_images["red"], content=str(content_images["content"]), control=control)
    assert np.abs(mine - ref).max() <= TOL
    other = ours(tiny_model, style_images["blue"], content=str(content_images["content"]), control=control)
    assert np.abs(other - ref).max() > 10 * TOL  # the style matters
    no_control = ours(
        tiny_model,
        style_images["red"],
        content=str(content_images["content"]),
        control=control,
        control_scale=[0.0],
    )
    assert np.abs(no_control - ref).max() > 10 * TOL  # and so does the ControlNet


def test_img2img_equals_stock(stock_sdxl, tiny_model, style_images, content_images):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(stock_sdxl)
    content = Image.open(content_images["content"]).convert("RGB")
    ref = stock_call(pipe, style_images["red"], image=content, strength=0.7)
    mine = ours(tiny_model, style_images["red"], content=str(content_images["content"]), strength=0.7)
    assert np.abs(mine - ref).max() <= TOL
    other = ours(tiny_model, style_images["blue"], content=str(content_images["content"]), strength=0.7)
    assert np.abs(other - ref).max() > 10 * TOL


def test_inpaint_equals_stock_with_style_masked_to_the_repainted_region(
    stock_sdxl, tiny_model, style_images, content_images
):
    """Stock inpainting with the inpainting mask also given as the IP-Adapter attention mask."""
    from diffusers import StableDiffusionXLInpaintPipeline
    from diffusers.image_processor import IPAdapterMaskProcessor

    pipe = StableDiffusionXLInpaintPipeline.from_pipe(stock_sdxl)
    content = Image.open(content_images["content"]).convert("RGB")
    mask = Image.open(content_images["left"])
    ip_mask = IPAdapterMaskProcessor().preprocess([mask], height=64, width=64)  # [1, 1, 64, 64]
    ref = stock_call(
        pipe,
        style_images["red"],
        image=content,
        mask_image=mask,
        strength=0.99,
        cross_attention_kwargs={"ip_adapter_masks": [ip_mask]},
    )
    mine = ours(
        tiny_model,
        style_images["red"],
        content=str(content_images["content"]),
        mask=str(content_images["left"]),
        inpaint_style="mask",
    )
    assert np.abs(mine - ref).max() <= TOL
    other = ours(
        tiny_model,
        style_images["blue"],
        content=str(content_images["content"]),
        mask=str(content_images["left"]),
        inpaint_style="mask",
    )
    assert np.abs(other - ref).max() > 10 * TOL
