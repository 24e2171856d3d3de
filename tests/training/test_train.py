"""Training on the tiny model (CPU): the loss falls, only the chosen adapter weights move, the file
loads in generate and acts only through the chosen blocks, and resume is bitwise exact."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import RUN, K


def test_loss_goes_down(trained):
    _, result = trained
    losses = result.losses
    assert len(losses) == 2 * K
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.01, f"loss did not fall: first window {first:.4f}, last window {last:.4f}"


def test_outputs_written(trained):
    trainer, result = trained
    out = result.out
    assert (out / "adapter.safetensors").is_file() and (out / "adapter_noema.safetensors").is_file()
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["blocks"] == RUN["blocks"] and cfg["resume"] is None
    assert (out / "validation" / f"step-{K:07d}.png").is_file()
    from PIL import Image

    with Image.open(out / "validation" / f"step-{2 * K:07d}.png") as grid:  # 2 rows (refs) x 2 seeds
        assert grid.size == (2 * RUN["resolution"], 2 * RUN["resolution"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 * K and log[-1]["images_per_s"] > 0
    assert result.data["used"] == 2 * K * 4 and result.data["unreadable"] == 0
    assert trainer.cache.hits > 0  # 12 samples, 96 reads: the encoders ran once per sample


def test_only_chosen_adapter_weights_and_projection_change(trained, tiny_paths):
    """Every parameter outside the chosen blocks' to_k_ip/to_v_ip and the projection is bitwise unchanged."""
    from instantstyle import models
    from instantstyle.training import layers

    trainer, _ = trained
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    fresh = models.load_base_pipeline(str(tiny_paths["base"]), torch.float32)
    encoder, _ = models.load_image_encoder(str(tiny_paths["image_encoder"]), torch.float32)

    trained_names = set(layers.trainable_state(unet, trainer.chosen))
    base_sd = fresh.unet.state_dict()
    now = unet.state_dict()
    extra = set(now) - set(base_sd)
    assert extra == {
        n.replace("proj.", "encoder_hid_proj.", 1) if n.startswith("proj.") else n for n in trained_names
    }
    for name, value in base_sd.items():
        assert torch.equal(now[name], value), f"frozen UNet parameter {name} changed"
    for part, ref in (
        (trainer.pipe.vae, fresh.vae),
        (trainer.pipe.text_encoder, fresh.text_encoder),
        (trainer.pipe.text_encoder_2, fresh.text_encoder_2),
        (trainer.image_encoder, encoder),
    ):
        for (name, a), (_, b) in zip(part.state_dict().items(), ref.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"frozen {type(part).__name__}.{name} changed"
    # the chosen weights and the projection did move
    moved = {
        k
        for k, v in layers.trainable_state(unet, trainer.chosen).items()
        if not torch.equal(v, trainer.initial_trainable[k])
    }
    assert moved == trained_names
    # the chosen set is exactly the spec: style module + every layer of up_blocks.1, nothing else
    assert all(p.startswith(("up_blocks.0.attentions.1.", "up_blocks.1.")) for p in trainer.chosen)
    assert any(p.startswith("up_blocks.1.") for p in trainer.chosen)


def _attn2_records(model, req, chosen):
    """Run generate with hooks on every attn2: per module, max |output - text-only attention(input)|."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    plain = AttnProcessor2_0()
    gaps: dict[str, float] = {}
    handles = []
    for name, module in model.pipe.unet.named_modules():
        if name.endswith("attn2"):

            def hook(mod, args, kwargs, output, name=name):
                hs = args[0] if args else kwargs["hidden_states"]
                ehs = kwargs.get("encoder_hidden_states")
                text = ehs[0] if isinstance(ehs, tuple) else ehs
                ref = plain(mod, hs, text)
                gaps[name] = max(gaps.get(name, 0.0), (output - ref).abs().max().item())

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        images = model.generate(req)
    finally:
        for h in handles:
            h.remove()
    return gaps, images


def test_saved_adapter_acts_only_through_chosen_blocks(trained, tiny_paths, style_images):
    import numpy as np

    from instantstyle import InstantStyle

    trainer, result = trained
    kw = dict(device="cpu", dtype="fp32", cache_dir=None, progress=False)
    model = InstantStyle.from_pretrained(
        str(tiny_paths["base"]), str(result.adapter), str(tiny_paths["image_encoder"]), **kw
    )
    req = model.request(
        prompt="a red circle", style=[str(style_images["red"])], mode="full", steps=2, guidance=3.0, seed=5
    )
    gaps, full_images = _attn2_records(model, req, trainer.chosen)
    chosen_modules = {p.removesuffix(".processor") for p in trainer.chosen}
    assert set(gaps) >= chosen_modules
    for name, gap in gaps.items():
        if name in chosen_modules:
            assert gap > 1e-3, f"{name}: the trained image branch adds nothing"
        else:
            assert gap == 0.0, f"{name}: untrained block changed by the adapter ({gap})"
    # --mode full gives exactly the same images as the trained blocks alone (zeros elsewhere)
    spec = ",".join(sorted({p.rsplit(".transformer_blocks", 1)[0] for p in trainer.chosen}))
    only = model.generate(req.model_copy(update={"mode": "style", "blocks": spec}))
    assert np.array_equal(np.asarray(only[0]), np.asarray(full_images[0]))
    # the trained adapter really changes the picture vs the initial (tiny h94) adapter
    initial = InstantStyle.from_pretrained(
        str(tiny_paths["base"]), str(tiny_paths["adapter"]), str(tiny_paths["image_encoder"]), **kw
    )
    before = initial.generate(req.model_copy(update={"mode": "style", "blocks": spec}))
    diff = np.abs(np.asarray(before[0], dtype=np.int16) - np.asarray(only[0], dtype=np.int16)).max()
    assert diff > 10


def test_cli_generate_loads_trained_adapter(trained, tiny_paths, style_images, tmp_path):
    from instantstyle.cli import main

    _, result = trained
    out = tmp_path / "g.png"
    rc = main(
        [
            "generate",
            "--base",
            str(tiny_paths["base"]),
            "--adapter",
            str(result.adapter),
            "--image-encoder",
            str(tiny_paths["image_encoder"]),
            "--style",
            str(style_images["red"]),
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file()


def test_resume_at_k_is_bitwise_identical_at_2k(trained, tiny_paths, shapes_dir, tmp_path):
    from safetensors.torch import load_file

    from instantstyle.training import train_adapter
    from instantstyle.training.config import make_config

    trainer, result = trained
    ck = result.out / "checkpoints"
    cfg = make_config(
        base=str(tiny_paths["base"]),
        image_encoder=str(tiny_paths["image_encoder"]),
        data=str(shapes_dir),
        out=str(tmp_path / "resumed"),
        cache_dir=trainer.config.cache_dir,
        resume=str(ck / f"checkpoint-{K:07d}"),
        **RUN,
    )
    resumed = train_adapter(cfg, progress=False)
    assert resumed.steps == 2 * K and len(resumed.losses) == K
    a = load_file(str(ck / f"checkpoint-{2 * K:07d}" / "trainable.safetensors"))
    b = load_file(
        str(tmp_path / "resumed" / "checkpoints" / f"checkpoint-{2 * K:07d}" / "trainable.safetensors")
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert resumed.losses == result.losses[K:]
    fa, fb = load_file(str(result.adapter)), load_file(str(resumed.adapter))  # EMA weights too
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_export_layout_and_zero_blocks(trained):
    from safetensors.torch import load_file

    from instantstyle import adapter as adapter_mod
    from instantstyle.training import layers

    trainer, result = trained
    sd = adapter_mod.load_state_dict(result.adapter)
    info = adapter_mod.inspect(sd)
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    ids = layers.h94_ids(unet)
    assert info.n_layers == len(ids) and info.tokens == 4
    chosen_ids = {ids[p] for p in trainer.chosen}
    for key, value in sd["ip_adapter"].items():
        idx = int(key.split(".")[0])
        assert (value.abs().sum() > 0) == (idx in chosen_ids), key
    assert (
        load_file(str(result.adapter)).keys()
        == load_file(str(result.out / "adapter_noema.safetensors")).keys()
    )


# ---------------------------------------------------------------------- pure pieces and errors


def test_dropout_masks_exact():
    from instantstyle.training.dropout import apply_dropout, dropout_masks

    u = torch.tensor([0.0, 0.049, 0.05, 0.099, 0.10, 0.149, 0.15, 0.9])
    t, i = dropout_masks(u, 0.05, 0.05, 0.05)
    assert t.tolist() == [True, True, False, False, True, True, False, False]
    assert i.tolist() == [False, False, True, True, True, True, False, False]
    # frequencies over many draws: 5% / 5% / 5%
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    t, i = dropout_masks(u, 0.05, 0.05, 0.05)
    assert abs((t & ~i).float().mean() - 0.05) < 0.003 and abs((i & ~t).float().mean() - 0.05) < 0.003
    assert abs((t & i).float().mean() - 0.05) < 0.003
    pe, po, ie = torch.ones(3, 2, 4), torch.ones(3, 5), torch.ones(3, 6)
    e_pe, e_po = torch.full((2, 4), 7.0), torch.full((5,), 8.0)
    dt, di = torch.tensor([True, False, True]), torch.tensor([False, True, True])
    pe2, po2, ie2 = apply_dropout(pe, po, ie, e_pe, e_po, dt, di)
    assert pe2[0].eq(7).all() and pe2[1].eq(1).all() and po2[2].eq(8).all() and po2[1].eq(1).all()
    assert ie2[0].eq(1).all() and ie2[1].eq(0).all() and ie2[2].eq(0).all()


def test_config_is_strict_and_reruns(tmp_path, shapes_dir):
    from instantstyle.errors import InstantStyleError
    from instantstyle.training.config import make_config, read_config_file

    with pytest.raises(InstantStyleError, match="unknown key"):
        make_config(base="tiny", data=str(shapes_dir), out="x", learning_rat=1e-4)
    with pytest.raises(InstantStyleError, match="<= 1"):
        make_config(
            base="tiny", data=str(shapes_dir), out="x", text_dropout=0.5, image_dropout=0.5, both_dropout=0.5
        )
    cfg = make_config(base="tiny", data=str(shapes_dir), out=str(tmp_path / "o"), max_steps=7)
    path = cfg.save(tmp_path)
    assert make_config(**read_config_file(path)) == cfg
    (tmp_path / "c.yaml").write_text(f"base: tiny\ndata: {shapes_dir}\nout: o\nmax_steps: 3\nbatch_size: 1\n")
    assert make_config(**read_config_file(tmp_path / "c.yaml")).max_steps == 3


def test_cli_config_rerun_and_flag_override(tmp_path, shapes_dir):
    import argparse

    from instantstyle.training.config import add_arguments, config_from_args, make_config

    cfg = make_config(
        base="tiny", data=str(shapes_dir), out=str(tmp_path / "o"), max_steps=7, blocks="style+layout"
    )
    path = cfg.save(tmp_path)
    p = argparse.ArgumentParser()
    add_arguments(p)
    again = config_from_args(p.parse_args(["--config", str(path), "--max-steps", "9", "--ema"]))
    assert again.max_steps == 9 and again.ema and again.blocks == "style+layout" and again.base == "tiny"


def test_bad_block_specs(tiny_model):
    from instantstyle.errors import InstantStyleError
    from instantstyle.training.layers import chosen_processors

    unet = tiny_model.pipe.unet
    assert len(chosen_processors(unet, "style")) == 2
    assert len(chosen_processors(unet, "all")) == sum(len(m.processors) for m in tiny_model.modules)
    assert len(chosen_processors(unet, "all,mid_block=0")) == len(chosen_processors(unet, "all")) - 2
    with pytest.raises(InstantStyleError, match="unknown block"):
        chosen_processors(unet, "up_blocks.0.attention.1")
    with pytest.raises(InstantStyleError, match="training takes 1"):
        chosen_processors(unet, "style=0.5")
    with pytest.raises(InstantStyleError, match="selects no"):
        chosen_processors(unet, "style=0")


def test_init_from_h94_adapter_and_8bit_message(tiny_paths, shapes_dir, tmp_path):
    from instantstyle import adapter as adapter_mod
    from instantstyle.errors import InstantStyleError
    from instantstyle.training.adapter_trainer import AdapterTrainer
    from instantstyle.training.config import make_config
    from instantstyle.training.layers import h94_ids

    base = dict(
        base=str(tiny_paths["base"]),
        image_encoder=str(tiny_paths["image_encoder"]),
        data=str(shapes_dir),
        resolution=32,
        batch_size=1,
        max_steps=1,
        checkpoint_every=0,
    )
    tr = AdapterTrainer(
        make_config(out=str(tmp_path / "a"), init=str(tiny_paths["adapter"]), **base),
        progress=False,
        log=lambda m: None,
    )
    tr.setup()
    init = adapter_mod.load_state_dict(tiny_paths["adapter"])
    unet = tr.accelerator.unwrap_model(tr.unet)
    ids = h94_ids(unet)
    for p in tr.chosen:
        proc = unet.get_submodule(p)
        assert torch.equal(proc.to_k_ip[0].weight, init["ip_adapter"][f"{ids[p]}.to_k_ip.weight"])
    assert torch.equal(
        unet.encoder_hid_proj.image_projection_layers[0].image_embeds.weight,
        init["image_proj"]["proj.weight"],
    )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(InstantStyleError, match="bitsandbytes"):
            AdapterTrainer(
                make_config(out=str(tmp_path / "b"), adam_8bit=True, **base),
                progress=False,
                log=lambda m: None,
            ).setup()
