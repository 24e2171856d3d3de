"""Regional styles: with a left/right mask pair, each region's attention output depends only on its own
style image, and only the style block sees the styles (hooks on attn2 outputs, first UNet call)."""

from __future__ import annotations

import contextlib

import torch

STYLE_ATTN2 = "up_blocks.0.attentions.1.transformer_blocks.0.attn2"  # first layer of the style block
OTHER_ATTN2 = "up_blocks.0.attentions.0.transformer_blocks.0.attn2"  # a neighbour that must stay style-free


@contextlib.contextmanager
def capture_first(unet, names):
    """Record each named module's output on its first call."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_m, _args, out, name=name):
            seen.setdefault(name, out.detach().clone())

        handles.append(unet.get_submodule(name).register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def run(model, styles, masks):
    with capture_first(model.pipe.unet, [STYLE_ATTN2, OTHER_ATTN2]) as seen:
        model.generate(
            prompt="a street",
            style=[str(s) for s in styles],
            style_masks=[str(m) for m in masks],
            steps=1,
            seed=0,
        )
    return seen


def halves(t: torch.Tensor):
    """``[B, h*w, C]`` tokens -> (left half, right half) of the square token grid."""
    b, n, c = t.shape
    side = int(n**0.5)
    grid = t.reshape(b, side, side, c)
    return grid[:, :, : side // 2], grid[:, :, side // 2 :]


def test_each_region_depends_only_on_its_own_style(tiny_model, style_images, content_images):
    masks = [content_images["left"], content_images["right"]]
    base = run(tiny_model, [style_images["red"], style_images["blue"]], masks)
    new_right = run(tiny_model, [style_images["red"], style_images["green"]], masks)
    new_left = run(tiny_model, [style_images["green"], style_images["blue"]], masks)

    left, right = halves(base[STYLE_ATTN2])
    l2, r2 = halves(new_right[STYLE_ATTN2])
    l3, r3 = halves(new_left[STYLE_ATTN2])
    # Changing the right style leaves the left region exactly as it was, and moves the right one.
    assert torch.equal(left, l2) and (right - r2).abs().max() > 1e-2
    # And the other way round.
    assert torch.equal(right, r3) and (left - l3).abs().max() > 1e-2
    # The style-block restriction holds: a block outside it never sees either style.
    assert torch.equal(base[OTHER_ATTN2], new_right[OTHER_ATTN2])
    assert torch.equal(base[OTHER_ATTN2], new_left[OTHER_ATTN2])


def test_regional_metadata_and_model_left_as_found(tiny_model, style_images, content_images):
    from instantstyle.adapter import ip_processors

    before = {n: list(p.scale) for n, p in ip_processors(tiny_model.pipe.unet).items()}
    im = tiny_model.generate(
        prompt="a street",
        style=[str(style_images["red"]), str(style_images["blue"])],
        style_masks=[str(content_images["left"]), str(content_images["right"])],
        style_weights=[1.0, 0.5],
        steps=1,
        seed=0,
    )[0]
    import json

    meta = json.loads(im.info["instantstyle"])
    assert (
        meta["task"] == "txt2img"
        and len(meta["style_mask_sha256"]) == 2
        and meta["style_weights"] == [1.0, 0.5]
    )
    assert {n: list(p.scale) for n, p in ip_processors(tiny_model.pipe.unet).items()} == before
