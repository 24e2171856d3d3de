"""Exact maths on hand-made tensors, the embedding cache and saved styles."""

from __future__ import annotations

import pytest
import torch

from instantstyle import embeddings
from instantstyle.errors import InstantStyleError


def test_weighted_mean_in_clip_space():
    e = torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, -2.0]])  # [N=2, D=3]
    out = embeddings.combine_styles(e, [3.0, 1.0], "mean")
    assert out.shape == (1, 3)
    assert torch.allclose(out, torch.tensor([[1.5, 1.0, 1.0]]))  # (3*e0 + 1*e1) / 4
    assert torch.equal(embeddings.combine_styles(e[:1], None, "mean"), e[:1])  # one image: unchanged


def test_concat_keeps_one_token_set_per_image():
    e = torch.randn(3, 8)
    assert torch.equal(embeddings.combine_styles(e, None, "concat"), e)
    with pytest.raises(InstantStyleError, match="need --style-combine mean"):
        embeddings.combine_styles(e, [1.0, 2.0, 1.0], "concat")


@pytest.mark.parametrize(
    "weights, msg", [([1.0], "2 style images"), ([0.0, 0.0], "not all 0"), ([1.0, -1.0], ">= 0")]
)
def test_bad_weights(weights, msg):
    with pytest.raises(InstantStyleError, match=msg):
        embeddings.combine_styles(torch.ones(2, 4), weights)


def test_content_subtraction_is_exact_and_unnormalised():
    img = torch.tensor([[2.0, 4.0, 6.0]])
    txt = torch.tensor([[1.0, 1.0, 10.0]])
    assert torch.equal(embeddings.subtract_content(img, txt, 0.5), torch.tensor([[1.5, 3.5, 1.0]]))
    two = torch.stack([img[0], -img[0]])  # [M=2, D]: every token set gets the same subtraction
    assert torch.equal(embeddings.subtract_content(two, txt, 1.0), two - txt)


def test_content_subtraction_refuses_mismatched_spaces():
    with pytest.raises(InstantStyleError, match="1024-d but the image embedding is 1280-d"):
        embeddings.subtract_content(torch.zeros(1, 1280), torch.zeros(1, 1024), 0.5)


def test_unconditional_branch_is_zeros_and_untouched():
    cond = torch.randn(2, 5)
    out = embeddings.with_unconditional(cond, do_cfg=True)
    assert out.shape == (2, 2, 5)  # [neg/pos, M, D]
    assert torch.equal(out[0], torch.zeros(2, 5)) and torch.equal(out[1], cond)
    assert torch.equal(embeddings.with_unconditional(cond, do_cfg=False), cond[None])


def test_style_file_round_trip_is_exact(tmp_path):
    style = embeddings.Style(
        torch.randn(2, 32), [0.7, 0.3], "h94/IP-Adapter/sdxl_models/image_encoder", ["a" * 64, "b" * 64]
    )
    path = embeddings.save_style(style, "water-colour_1", tmp_path)
    loaded = embeddings.load_style("@water-colour_1", tmp_path)
    assert torch.equal(loaded.embeds, style.embeds)
    assert (loaded.weights, loaded.encoder_id, loaded.image_hashes) == (
        style.weights,
        style.encoder_id,
        style.image_hashes,
    )
    assert embeddings.list_styles(tmp_path) == ["water-colour_1"]
    with pytest.raises(InstantStyleError, match="already exists"):
        embeddings.save_style(style, "water-colour_1", tmp_path)
    assert path.parent == tmp_path and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "", "x" * 65])
def test_style_names_cannot_escape_the_styles_dir(tmp_path, name):
    with pytest.raises(InstantStyleError, match="not allowed"):
        embeddings.style_path(name, tmp_path)


def test_missing_style_names_the_fix(tmp_path):
    with pytest.raises(InstantStyleError, match="instantstyle style save"):
        embeddings.load_style("@nope", tmp_path)


def test_encoder_runs_once_per_image_thanks_to_the_cache(tiny_model, style_images, tmp_path):
    enc = tiny_model.image_encoder
    calls = []
    handle = enc.register_forward_hook(lambda *a: calls.append(1))
    try:
        cache = embeddings.EmbeddingCache(tmp_path / "c")
        se = embeddings.StyleEncoder(enc, tiny_model.feature_extractor, "tiny-test", cache)
        a = se.encode([style_images["red"], style_images["blue"]])
        b = se.encode([style_images["blue"], style_images["red"]])
        assert len(calls) == 2 and torch.equal(a.embeds, b.embeds.flip(0))
        fresh = embeddings.StyleEncoder(
            enc, tiny_model.feature_extractor, "tiny-test", embeddings.EmbeddingCache(tmp_path / "c")
        )  # a new process, same disk cache
        c = fresh.encode([style_images["red"]])
        assert len(calls) == 2 and torch.equal(c.embeds, a.embeds[:1])
        other = embeddings.StyleEncoder(enc, tiny_model.feature_extractor, "another-encoder", cache)
        other.encode([style_images["red"]])
        assert len(calls) == 3  # the key includes the encoder
    finally:
        handle.remove()


def test_saved_style_from_another_encoder_is_refused(tiny_model, tmp_path):
    embeddings.save_style(
        embeddings.Style(torch.zeros(1, 32), [1.0], "some/other-encoder"), "other", tmp_path
    )
    se = embeddings.StyleEncoder(
        tiny_model.image_encoder, tiny_model.feature_extractor, "tiny", styles_directory=tmp_path
    )
    with pytest.raises(InstantStyleError, match="save it again with this encoder"):
        se.encode(["@other"])


# ------------------------------------------------------------------ patch features (IP-Adapter Plus)


def test_mean_of_patch_features_is_position_by_position():
    e = torch.randn(2, 5, 3)  # [N=2, L=5, H=3]
    out = embeddings.combine_styles(e, [3.0, 1.0], "mean")
    assert out.shape == (1, 5, 3)
    assert torch.allclose(out[0], (3 * e[0] + e[1]) / 4)  # patch l of each image, weighted
    assert torch.equal(embeddings.combine_styles(e, None, "concat"), e)  # one 16-token set per image


def test_patch_features_have_no_content_subtraction():
    with pytest.raises(InstantStyleError, match="does not apply to an IP-Adapter Plus") as err:
        embeddings.subtract_content(torch.zeros(1, 257, 1280), torch.zeros(1, 1280), 0.5)
    assert "\n" not in str(err.value) and "ip-adapter_sdxl" in str(err.value)


def test_unconditional_and_negative_on_patch_features():
    cond, base = torch.randn(2, 4, 3), torch.randn(1, 4, 3)  # [M, L, H], the zero image's [1, L, H]
    out = embeddings.with_unconditional(cond, True, base)
    assert (
        out.shape == (2, 2, 4, 3) and torch.equal(out[0], base.expand(2, 4, 3)) and torch.equal(out[1], cond)
    )
    neg = torch.randn(3, 4, 3)
    half = embeddings.negative_embedding(neg, 0.5, base)
    assert torch.allclose(half, base + 0.5 * (neg.mean(0, keepdim=True) - base))
    assert torch.equal(embeddings.negative_embedding(neg, 0.0, base), base)  # scale 0: the plain branch
    flat = torch.randn(3, 8)  # global features: base None means zeros, i.e. scale * mean
    assert torch.equal(embeddings.negative_embedding(flat, 0.5), 0.5 * flat.mean(0, keepdim=True))
    with pytest.raises(InstantStyleError, match="negative embedding is"):
        embeddings.with_unconditional(cond, True, torch.zeros(1, 3))


def test_cache_keys_and_encoder_runs_distinguish_the_two_kinds(plus_model, style_images, tmp_path):
    assert embeddings.EmbeddingCache.key("e", "h") != embeddings.EmbeddingCache.key("e", "h", "patch")
    enc = plus_model.image_encoder
    calls = []
    handle = enc.register_forward_hook(lambda *a: calls.append(1))
    try:
        cache = embeddings.EmbeddingCache(tmp_path / "c")
        kw = dict(cache=cache, styles_directory=tmp_path)
        patch = embeddings.StyleEncoder(enc, plus_model.feature_extractor, "vit-h", features="patch", **kw)
        flat = embeddings.StyleEncoder(enc, plus_model.feature_extractor, "vit-h", **kw)
        a = patch.encode([style_images["red"]])
        b = flat.encode([style_images["red"]])
        assert len(calls) == 2 and a.embeds.shape == (1, 257, 48) and b.embeds.shape == (1, 24)
        patch.encode([style_images["red"]])
        assert len(calls) == 2  # cached
        embeddings.save_style(a, "patchy", tmp_path)
        assert embeddings.load_style("@patchy", tmp_path).features == "patch"
        assert torch.equal(patch.encode(["@patchy"]).embeds, a.embeds)
        with pytest.raises(InstantStyleError, match="holds patch image features .* reads global"):
            flat.encode(["@patchy"])
    finally:
        handle.remove()
