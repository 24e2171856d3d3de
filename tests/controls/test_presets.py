"""The new presets as data, resolved on the full SDXL topology (meta device), and the pure maths."""

from __future__ import annotations

import pytest
import torch

from instantstyle import blocks, embeddings, injection, models
from instantstyle.errors import InstantStyleError
from instantstyle.testing.fullsize import SDXL_UNET_CONFIG

STYLE, LAYOUT = blocks.STYLE_BLOCK, blocks.LAYOUT_BLOCK


@pytest.fixture(scope="module")
def sdxl():
    return blocks.discover(models.meta_unet(SDXL_UNET_CONFIG))


def _on(modules, scales):
    return set(blocks.active_modules(modules, scales))


def test_strong_is_every_module_but_the_layout_block(sdxl):
    scales = blocks.resolve(sdxl, blocks.preset_spec("strong"), 0.8)
    assert _on(sdxl, scales) == {m.name for m in sdxl} - {LAYOUT}
    assert sum(1 for s in scales.values() if s == 0.8) == 60  # 70 attn2 layers minus the layout block's 10


def test_composition_is_the_layout_block(sdxl):
    assert _on(sdxl, blocks.resolve(sdxl, blocks.preset_spec("composition"))) == {LAYOUT}


def test_precise_branches_and_boost(sdxl):
    out = blocks.resolve_branches(sdxl, blocks.preset_spec("precise"), 0.5, layout_boost=3.0)
    assert set(out) == {"cond", "uncond"}
    assert _on(sdxl, out["cond"]) == {STYLE} and _on(sdxl, out["uncond"]) == {LAYOUT}
    assert set(out["uncond"].values()) == {0.0, 1.5} and set(out["cond"].values()) == {0.0, 0.5}
    with pytest.raises(InstantStyleError, match="unconditional branch|uncond branch"):
        blocks.resolve(sdxl, blocks.preset_spec("precise"))  # callers that know one branch refuse it
    with pytest.raises(InstantStyleError, match="--layout-boost 2.0 has nothing to boost"):
        blocks.resolve_branches(sdxl, blocks.preset_spec("strong"), layout_boost=2.0)
    # module names in a custom spec act on the conditional branch; the preset keeps its branch
    custom = blocks.resolve_branches(sdxl, blocks.parse_spec(f"precise,{STYLE}=0.3"))
    assert set(custom["cond"][p] for p in next(m for m in sdxl if m.name == STYLE).processors) == {0.3}
    assert _on(sdxl, custom["uncond"]) == {LAYOUT}


def test_with_unconditional_and_negative_embedding():
    cond = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # [M=2, D=2]
    assert torch.equal(embeddings.with_unconditional(cond, True)[0], torch.zeros(2, 2))
    neg = embeddings.negative_embedding(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), 0.5)  # mean * 0.5
    assert torch.equal(neg, torch.tensor([[0.5, 0.5]]))
    both = embeddings.with_unconditional(cond, True, neg)
    assert both.shape == (2, 2, 2) and torch.equal(both[0], neg.expand(2, 2)) and torch.equal(both[1], cond)
    assert torch.equal(embeddings.with_unconditional(cond, False, neg), cond[None])


def test_slot_projection_zeroes_only_the_conditional_half():
    inner = torch.nn.Linear(3, 8, bias=True)
    proj = injection.SlotProjection(torch.nn.Sequential(inner, torch.nn.Unflatten(1, (2, 4))))
    x = torch.randn(4, 3)  # rows: 2 unconditional, then 2 conditional
    proj.set_gain(0.0)
    out = proj(x)
    assert torch.equal(out[:2], proj.inner(x)[:2]) and torch.count_nonzero(out[2:]) == 0
    proj.set_gain(1.0)
    assert torch.equal(proj(x), proj.inner(x))  # x 1 is exact
