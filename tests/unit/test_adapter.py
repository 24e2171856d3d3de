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
