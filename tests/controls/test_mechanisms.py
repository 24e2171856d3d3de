"""Hooks on the cross-attention modules, per CFG half: each control acts where it says and nowhere else.

- precise: at the layout block the conditional half receives zero image tokens and the
  unconditional half the reference's; the style block is the usual IP-Adapter.
- style window 0:0.5: the IP branch adds exactly nothing in the second half of the steps.
- composition image / style image: re-running every attn2 module on the inputs it saw with the
  other image's tokens changes only the layout block / only the style block.
- negative style image: only the unconditional half of the image tokens changes.
"""

from __future__ import annotations

import contextlib

import torch

from instantstyle import injection
from instantstyle.adapter import scoped_scales

STYLE, LAYOUT = "up_blocks.0.attentions.1", "down_blocks.2.attentions.1"
BASE = dict(prompt="a cat", steps=1, seed=0, width=64, height=64)


def _attn2(unet):
    return {
        n[: -len(".processor")]: unet.get_submodule(n[: -len(".processor")])
        for n in unet.attn_processors
        if n.endswith("attn2.processor")
    }


def _active(proc) -> list[int]:
    """Adapter slots whose image branch runs in this processor (fast path or stock)."""
    if hasattr(proc, "ip"):
        return [i for i, *_ in proc.ip]
    return [i for i, s in enumerate(proc.scale) if s]


def _module(name: str) -> str:
    return name.split(".transformer_blocks")[0]


@contextlib.contextmanager
def recording(unet):
    """Per attn2 call: (module, UNet call index, active slots, args, kwargs)."""
    calls, step = [], [-1]
    handles = [unet.register_forward_pre_hook(lambda *a: step.__setitem__(0, step[0] + 1))]
    for name, m in _attn2(unet).items():

        def hook(mod, args, kwargs, name=name):
            calls.append((name, step[0], _active(mod.processor), args, kwargs))

        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _reference_tokens(model, prep):
    with torch.no_grad():
        return model.pipe.unet.encoder_hid_proj([prep.ip_embeds[0]])[0][1:]  # [1, n, T, C]: the cond half


def test_precise_layout_block_gets_zero_tokens_in_cond_and_the_reference_in_uncond(tiny_model, style_images):
    req = tiny_model.request(style=[str(style_images["red"])], mode="precise", **BASE)
    prep = tiny_model.prepare(req)
    assert prep.slots == ["style", "uncond"]
    ref = _reference_tokens(tiny_model, prep)
    with recording(tiny_model.pipe.unet) as calls:
        tiny_model.run(tiny_model.pipe, prep, output_type="latent")
    modules = {_module(name) for name, _, active, _, _ in calls if active}
    assert modules == {STYLE, LAYOUT}
    for name, _, active, _, kwargs in calls:
        tokens = kwargs["encoder_hidden_states"][1]  # one [2, n, T, C] per slot: (uncond, cond)
        if _module(name) == LAYOUT:
            assert active == [1]
            assert torch.count_nonzero(tokens[1][1:]) == 0  # conditional half: zero image tokens
            assert torch.equal(tokens[1][:1], ref)  # unconditional half: the reference's
        elif _module(name) == STYLE:
            assert active == [0]
            assert torch.equal(tokens[0][1:], ref) and not torch.equal(tokens[0][:1], ref)
        else:
            assert active == []


def test_window_first_half_only(tiny_model, style_images):
    unet = tiny_model.pipe.unet
    branch: dict[int, float] = {}
    busy = [False]

    def hook(mod, args, kwargs, out):  # the IP branch's share of the output: re-run with zero image tokens
        if busy[0]:
            return
        busy[0] = True
        try:
            text, tokens = kwargs["encoder_hidden_states"]
            bare = mod(
                *args, **{**kwargs, "encoder_hidden_states": (text, [torch.zeros_like(t) for t in tokens])}
            )
        finally:
            busy[0] = False
        branch[step[0]] = max(branch.get(step[0], 0.0), (out - bare).abs().max().item())

    step = [-1]
    handles = [unet.register_forward_pre_hook(lambda *a: step.__setitem__(0, step[0] + 1))]
    handles += [
        m.register_forward_hook(hook, with_kwargs=True)
        for n, m in _attn2(unet).items()
        if _module(n) == STYLE
    ]
    try:
        req = tiny_model.request(
            style=[str(style_images["red"])], **{**BASE, "steps": 4}, style_window="0:0.5"
        )
        tiny_model.run(tiny_model.pipe, tiny_model.prepare(req), output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert sorted(branch) == [0, 1, 2, 3]
    assert branch[0] > 1e-3 and branch[1] > 1e-3  # first half: the style is injected
    assert branch[2] == 0.0 and branch[3] == 0.0  # second half: exactly nothing
    assert injection.window_steps((0.0, 0.5), 4) == range(0, 2)
    assert injection.window_steps((0.8, 1.0), 30) == range(
        24, 30
    )  # rounding-safe (0.8 * 30 = 24.000000000000004)


def _changed_modules(model, prep, seen, slot, other_tokens):
    """Re-run every attn2 module on its recorded inputs with slot ``slot``'s tokens replaced."""
    unet = model.pipe.unet
    changed = set()
    with injection.shared_slots(unet, prep.slots[1:]), scoped_scales(unet, prep.scales), torch.no_grad():
        for name, _, _, args, kwargs in seen:
            text, tokens = kwargs["encoder_hidden_states"]
            swapped = list(tokens)
            swapped[slot] = other_tokens
            module = unet.get_submodule(name)
            out_a = module(*args, **kwargs)
            out_b = module(*args, **{**kwargs, "encoder_hidden_states": (text, swapped)})
            if not torch.equal(out_a, out_b):
                assert (out_a - out_b).abs().max() > 1e-4  # a real difference, not rounding
                changed.add(_module(name))
    return changed


def test_composition_image_only_in_the_layout_block_style_only_in_the_style_block(tiny_model, style_images):
    red, blue, green = (str(style_images[k]) for k in ("red", "blue", "green"))
    req = tiny_model.request(style=[red], composition=blue, **BASE)
    prep = tiny_model.prepare(req)
    assert prep.slots == ["style", "composition"]
    with recording(tiny_model.pipe.unet) as seen:
        tiny_model.run(tiny_model.pipe, prep, output_type="latent")
    other = tiny_model.prepare(req.model_copy(update={"style": [green], "composition": green}))
    with torch.no_grad():
        tokens = tiny_model.pipe.unet.encoder_hid_proj([other.ip_embeds[0]])[0]  # green's tokens
    assert _changed_modules(tiny_model, prep, seen, 1, tokens) == {LAYOUT}
    assert _changed_modules(tiny_model, prep, seen, 0, tokens) == {STYLE}


def test_negative_style_changes_only_the_unconditional_tokens(tiny_model, style_images):
    def style_tokens(**kw):
        prep = tiny_model.prepare(tiny_model.request(style=[str(style_images["red"])], **BASE, **kw))
        with recording(tiny_model.pipe.unet) as calls:
            latents = tiny_model.run(tiny_model.pipe, prep, output_type="latent")
        tokens = [kw_["encoder_hidden_states"][1] for name, _, _, _, kw_ in calls if _module(name) == STYLE]
        return tokens[0][0], latents  # slot 0: [2, n, T, C]

    plain, out_plain = style_tokens()
    negative, out_negative = style_tokens(negative_style=str(style_images["blue"]))
    assert torch.equal(plain[1:], negative[1:])  # conditional half: unchanged
    assert (plain[:1] - negative[:1]).abs().max() > 1e-3  # unconditional half: the negative image's
    zero, _ = style_tokens(negative_style=str(style_images["blue"]), negative_style_scale=0.0)
    assert torch.equal(zero, plain)  # scale 0 = the zeros diffusers uses
    assert (out_plain - out_negative).abs().max() > 1e-3
