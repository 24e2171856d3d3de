"""Block discovery, presets and spec resolution (blocks.py), on the tiny and the full SDXL topology."""

from __future__ import annotations

import pytest

from instantstyle import blocks, models
from instantstyle.errors import InstantStyleError

# Full-size SDXL UNet config (stabilityai/stable-diffusion-xl-base-1.0/unet/config.json), built on
# the meta device: structure only, no memory.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=2048, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True,
)


@pytest.fixture(scope="module")
def sdxl_modules():
    return blocks.discover(models.meta_unet(SDXL_UNET))


@pytest.fixture(scope="module")
def tiny_modules():
    return blocks.discover(models.meta_unet(models.load_unet_config("tiny")))


def test_discovers_real_sdxl_layout(sdxl_modules):
    by_name = {m.name: m for m in sdxl_modules}
    assert sum(len(m.processors) for m in sdxl_modules) == 70  # 70 attn2 processors in SDXL
    style, layout = by_name["up_blocks.0.attentions.1"], by_name["down_blocks.2.attentions.1"]
    assert (style.channels, style.layers, style.downsample) == (1280, 10, 4)  # 32x32 at 1024 px
    assert (layout.channels, layout.layers, layout.downsample) == (1280, 10, 4)
    assert style.roles == ("style",) and layout.roles == ("layout",)
    assert by_name["down_blocks.1.attentions.0"].channels == 640
    assert by_name["mid_block.attentions.0"].layers == 10
    assert not any(m.block in ("down_blocks.0", "up_blocks.2") for m in sdxl_modules)


def test_tiny_keeps_the_topology(tiny_modules, sdxl_modules):
    assert [m.name for m in tiny_modules] == [m.name for m in sdxl_modules]


@pytest.mark.parametrize(
    "mode, active",
    [
        ("style", {"up_blocks.0.attentions.1"}),
        ("layout", {"down_blocks.2.attentions.1"}),
        ("style+layout", {"up_blocks.0.attentions.1", "down_blocks.2.attentions.1"}),
    ],
)
def test_presets_activate_exactly_their_modules(sdxl_modules, mode, active):
    scales = blocks.resolve(sdxl_modules, blocks.preset_spec(mode), scale=0.7)
    assert set(blocks.active_modules(sdxl_modules, scales)) == active
    on = {p: s for p, s in scales.items() if s}
    assert len(on) == 10 * len(active) and set(on.values()) == {0.7}


def test_full_preset_and_all_alias(sdxl_modules):
    full = blocks.resolve(sdxl_modules, blocks.preset_spec("full"))
    assert len(full) == 70 and set(full.values()) == {1.0}
    assert blocks.resolve(sdxl_modules, blocks.parse_spec("all")) == full


def test_custom_spec_layer_beats_module_beats_block(sdxl_modules):
    spec = blocks.parse_spec(
        "up_blocks.0=0.2,up_blocks.0.attentions.1=1.0,up_blocks.0.attentions.1.transformer_blocks.3=0,"
        "down_blocks.2.attentions.1=0.5"
    )
    s = blocks.resolve(sdxl_modules, spec, scale=2.0)
    p = "up_blocks.0.attentions.{}.transformer_blocks.{}.attn2.processor"
    assert s[p.format(1, 0)] == 2.0 and s[p.format(1, 3)] == 0.0  # layer override, scale multiplies
    assert s[p.format(0, 5)] == pytest.approx(0.4) and s[p.format(2, 9)] == pytest.approx(0.4)  # block level
    assert s["down_blocks.2.attentions.1.transformer_blocks.9.attn2.processor"] == 1.0
    assert s["mid_block.attentions.0.transformer_blocks.0.attn2.processor"] == 0.0  # unnamed -> 0


def test_explicit_module_overrides_preset(sdxl_modules):
    s = blocks.resolve(sdxl_modules, blocks.parse_spec("style+layout,down_blocks.2.attentions.1=0.5"))
    assert s["down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor"] == 0.5
    assert s["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"] == 1.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("up_blocks.0.attention.1=1", "did you mean 'up_blocks.0.attentions.1'"),
        ("block_5=1", "unknown block 'block_5'"),
        ("up_blocks.0.attentions.1.transformer_blocks.10=1", "unknown block"),  # SDXL has 10 layers: 0-9
        ("up_blocks.0.attentions.1=-1", "must be a finite number >= 0"),
        ("up_blocks.0.attentions.1=abc", "not a number"),
        ("up_blocks.0.attentions.1=nan", "must be a finite number >= 0"),
        ("up_blocks.0.attentions.1=1,up_blocks.0.attentions.1=0.5", "gets two scales"),
        (",", "empty spec"),
    ],
)
def test_bad_specs_are_errors_not_silent_zeros(sdxl_modules, spec, message):
    with pytest.raises(InstantStyleError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        blocks.resolve(sdxl_modules, blocks.parse_spec(spec))
    assert "\n" not in str(exc.value)


def test_unknown_name_lists_valid_names(sdxl_modules):
    with pytest.raises(InstantStyleError) as exc:
        blocks.resolve(sdxl_modules, blocks.parse_spec("blok_0=1"))
    for name in ("style", "up_blocks.0.attentions.1", "down_blocks.2.attentions.1", "mid_block.attentions.0"):
        assert name in str(exc.value)


def test_negative_global_scale_is_an_error(sdxl_modules):
    with pytest.raises(InstantStyleError, match="scale"):
        blocks.resolve(sdxl_modules, blocks.preset_spec("style"), scale=-0.1)


def test_unknown_mode_is_an_error():
    with pytest.raises(InstantStyleError, match="valid modes"):
        blocks.preset_spec("stlye")


def test_matches_diffusers_dict_expansion(tiny_model):
    """Our presets switch on exactly the processors diffusers' InstantStyle dicts switch on."""
    from instantstyle.adapter import ip_processors

    pipe = tiny_model.pipe
    dicts = {
        "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
        "style+layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
        "full": 1.0,
    }
    procs = ip_processors(pipe.unet)
    saved = {n: list(p.scale) for n, p in procs.items()}
    try:
        for mode, cfg in dicts.items():
            pipe.set_ip_adapter_scale(cfg)
            theirs = {n: p.scale[0] for n, p in ip_processors(pipe.unet).items()}
            ours = blocks.resolve(tiny_model.modules, blocks.preset_spec(mode))
            assert ours == {n: float(v) for n, v in theirs.items()}, mode
    finally:
        for n, p in procs.items():
            p.scale = saved[n]
