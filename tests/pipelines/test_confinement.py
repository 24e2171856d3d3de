"""Injection is confined to the active blocks (hook test on every cross-attention module).

One UNet call is recorded with style A; then every attn2 module is re-run on exactly the inputs it
saw, once with A's image tokens and once with B's. Outside the active blocks the outputs are
identical to the bit; inside they differ.
"""

from __future__ import annotations

import pytest
import torch

from instantstyle import blocks
from instantstyle.adapter import scoped_scales


def _attn2_modules(unet):
    return {
        n[: -len(".processor")]: unet.get_submodule(n[: -len(".processor")])
        for n in unet.attn_processors
        if n.endswith("attn2.processor")
    }


@pytest.mark.parametrize("mode", ["style", "style+layout"])
def test_only_active_blocks_see_the_style(tiny_model, style_images, mode):
    unet = tiny_model.pipe.unet
    req = tiny_model.request(prompt="a cat", style=[str(style_images["red"])], mode=mode, steps=1, seed=0)
    prep_a = tiny_model.prepare(req)
    prep_b = tiny_model.prepare(req.model_copy(update={"style": [str(style_images["blue"])]}))
    with torch.no_grad():
        tokens_b = unet.encoder_hid_proj(prep_b.ip_embeds)  # projected image tokens of style B

    modules = _attn2_modules(unet)
    seen = {}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs, name=n: seen.setdefault(name, (args, kwargs)), with_kwargs=True
        )
        for n, m in modules.items()
    ]
    try:
        tiny_model.run(tiny_model.pipe, prep_a, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(modules)

    active = set(blocks.active_modules(tiny_model.modules, prep_a.scales[0]))
    changed = set()
    with scoped_scales(unet, prep_a.scales), torch.no_grad():
        for name, module in modules.items():
            args, kwargs = seen[name]
            text, _tokens_a = kwargs["encoder_hidden_states"]
            out_a = module(*args, **kwargs)
            out_b = module(
                *args, **{**kwargs, "encoder_hidden_states": (text, [t[: text.shape[0]] for t in tokens_b])}
            )
            if not torch.equal(out_a, out_b):
                changed.add(name.split(".transformer_blocks")[0])
                assert (out_a - out_b).abs().max() > 1e-3  # a real difference, not rounding
    assert changed == active and len(active) == len(mode.split("+"))
