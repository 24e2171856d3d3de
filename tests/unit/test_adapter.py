"""IP-Adapter files, compatibility checks and scoped scales."""

from __future__ import annotations

import pytest
import torch

from instantstyle import adapter
from instantstyle.errors import InstantStyleError


def test_bin_and_safetensors_load_to_identical_weights(tiny_paths):
    a = adapter.load_state_dict(tiny_paths["adapter"])
    b = adapter.load_state_dict(tiny_paths["adapter_bin"])
    for part in ("image_proj", "ip_adapter"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    info = adapter.inspect(a)
    assert (info.kind, info.clip_dim, info.cross_dim, info.tokens, info.n_layers) == ("basic", 32, 64, 4, 17)


def test_h94_key_ids_are_the_processor_indices(tiny_paths, tiny_model):
    ids = sorted({int(k.split(".")[0]) for k in adapter.load_state_dict(tiny_paths["adapter"])["ip_adapter"]})
    names = list(tiny_model.pipe.unet.attn_processors)
    assert all(names[i].endswith("attn2.processor") for i in ids) and len(ids) == 17


def test_truncated_or_foreign_files_are_refused(tmp_path, tiny_paths):
    data = tiny_paths["adapter"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InstantStyleError, match="could not be read"):
        adapter.load_state_dict(cut)
    from safetensors.torch import save_file

    foreign = tmp_path / "lora.safetensors"
    save_file({"lora_unet.down.weight": torch.zeros(2)}, foreign)
    with pytest.raises(InstantStyleError, match="not in the h94 IP-Adapter layout"):
        adapter.load_state_dict(foreign)


def test_bin_files_never_run_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    torch.save({"image_proj": Evil(), "ip_adapter": {}}, path)
    with pytest.raises(InstantStyleError, match="could not be read"):
        adapter.load_state_dict(path)


def test_vit_h_vs_bigg_mix_up_names_both_dimensions(tiny_model):
    info = adapter.AdapterInfo("basic", clip_dim=1024, cross_dim=64, tokens=4, n_layers=17)
    with pytest.raises(
        InstantStyleError, match="expects 1024-d image embeddings but the image encoder gives 32-d"
    ):
        adapter.check_compatible(info, tiny_model.image_encoder, tiny_model.pipe.unet, 17)


def test_scoped_scales_restore_even_on_error(tiny_model):
    procs = adapter.ip_processors(tiny_model.pipe.unet)
    before = {n: list(p.scale) for n, p in procs.items()}
    name = next(iter(procs))
    with pytest.raises(RuntimeError):
        with adapter.scoped_scales(tiny_model.pipe.unet, [{name: 0.9}]):
            assert procs[name].scale == [0.9]
            assert all(p.scale == [0.0] for n, p in procs.items() if n != name)
            raise RuntimeError("boom")
    assert {n: list(p.scale) for n, p in procs.items()} == before


# ------------------------------------------------------------------ Plus and ViT-H adapters


def _encoder(hidden: int, projection: int):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden, projection_dim=projection))


def test_plus_and_vit_h_files_are_inspected(tiny_paths):
    plus = adapter.inspect(adapter.load_state_dict(tiny_paths["plus_adapter"]))
    vit_h = adapter.inspect(adapter.load_state_dict(tiny_paths["vit_h_adapter"]))
    assert (plus.kind, plus.clip_dim, plus.cross_dim, plus.tokens, plus.n_layers) == ("plus", 48, 64, 16, 17)
    assert (vit_h.kind, vit_h.clip_dim, vit_h.tokens, vit_h.features) == ("basic", 24, 4, "global")
    assert plus.patch_features and plus.features == "patch"


@pytest.mark.parametrize(
    "kind, clip_dim, hidden, projection, expect",
    [  # the real widths: ViT-H/14 hidden 1280, projection 1024; bigG/14 hidden 1664, projection 1280
        ("plus", 1280, 1664, 1280, "hidden size is 1664 \\(1280 is only its projection\\)"),
        (
            "plus",
            1280,
            1024,
            768,
            "reads 1280-wide patch features but the image encoder's hidden size is 1024",
        ),
        ("basic", 1024, 1664, 1280, "expects 1024-d image embeddings but the image encoder gives 1280-d"),
        ("basic", 1280, 1280, 1024, "expects 1280-d image embeddings but the image encoder gives 1024-d"),
    ],
)
def test_each_kind_checks_its_own_width(kind, clip_dim, hidden, projection, expect):
    info = adapter.AdapterInfo(kind, clip_dim=clip_dim, cross_dim=2048, tokens=4, n_layers=70)
    with pytest.raises(InstantStyleError, match=expect) as err:
        adapter.check_encoder(info, _encoder(hidden, projection))
    assert "\n" not in str(err.value) and "h94/IP-Adapter/models/image_encoder" in str(err.value)
    adapter.check_encoder(
        info, _encoder(clip_dim if kind == "plus" else 7, clip_dim if kind == "basic" else 7)
    )


@pytest.mark.parametrize(
    "keys, expect",
    [
        (["perceiver_resampler.proj_in.weight", "proj.0.weight"], "FaceID Plus"),
        (["proj.0.weight", "proj.2.weight", "proj.3.weight"], "full-face"),
        (["proj.0.weight", "proj.2.weight", "norm.weight"], "FaceID adapter"),
        (["something.weight"], "no known layout"),
    ],
)
def test_other_layouts_are_one_line_errors_naming_them(keys, expect):
    sd = {
        "image_proj": {k: torch.zeros(2, 2) for k in keys},
        "ip_adapter": {"1.to_k_ip.weight": torch.zeros(2)},
    }
    with pytest.raises(InstantStyleError, match=expect) as err:
        adapter.inspect(sd)
    assert "\n" not in str(err.value) and "ip-adapter-plus_sdxl_vit-h" in str(err.value)


def test_a_resampler_diffusers_cannot_build_is_refused():
    proj = {"latents": torch.zeros(1, 16, 32), "proj_in.weight": torch.zeros(32, 48)}
    proj |= {"proj_out.weight": torch.zeros(64, 32), "layers.0.0.to_q.weight": torch.zeros(64, 32)}
    with pytest.raises(InstantStyleError, match=r"Resampler of 1 layers .* \(4 layers, 64-wide heads\)"):
        adapter.inspect({"image_proj": proj, "ip_adapter": {}})


def test_the_adapter_names_its_image_encoder():
    from instantstyle import models

    assert models.default_image_encoder("tiny", "tiny-plus") == "tiny-vit-h"
    assert models.default_image_encoder("tiny", "tiny-vit-h") == "tiny-vit-h"
    assert models.default_image_encoder("tiny") == "tiny"
    for name in ("ip-adapter-plus_sdxl_vit-h.safetensors", "ip-adapter_sdxl_vit-h.bin"):
        ref = f"h94/IP-Adapter/sdxl_models/{name}"
        assert models.default_image_encoder(models.DEFAULT_BASE, ref) == "h94/IP-Adapter/models/image_encoder"
    default = models.default_image_encoder(models.DEFAULT_BASE, models.DEFAULT_ADAPTER)
    assert default == "h94/IP-Adapter/sdxl_models/image_encoder"


def test_a_missing_plus_file_names_its_fetch_command(monkeypatch):
    from instantstyle import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(InstantStyleError, match="instantstyle download vit-h"):
        models.load_adapter_state_dict("h94/IP-Adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors")
