"""Validation grids of an adapter training run: fixed (reference, prompt) rows x seeds, on the main process."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from PIL import Image

from ..files import atomic_write
from . import data as data_mod


def references(trainer) -> list[tuple[torch.Tensor, str]]:
    """Fixed (image embedding [D], prompt) rows for validation grids."""
    cfg = trainer.config
    if cfg.validation_images:
        from ..embeddings import encode_images
        from ..images import load_image

        ims = [
            data_mod.center_crop(load_image(p, what="validation image"), cfg.resolution)[0]
            for p in cfg.validation_images
        ]
        embeds = encode_images(trainer.image_encoder, trainer.feature_extractor, ims, "train-validation")
        prompts = cfg.validation_prompts or ["a picture"]
        return [(e, p) for e in embeds for p in prompts]
    # default: the first two usable samples of the data (a separate reader: the training stream is untouched)
    source = copy.copy(trainer.source)
    source.stats = data_mod.DataStats()
    stream = data_mod.SampleStream(source, cfg.resolution, cfg.seed, 0, 1)
    samples = [stream.next_usable(lambda r: data_mod.decode(r, cfg.resolution)) for _ in range(2)]
    embeds = trainer.encode_samples(samples)["image_embeds"].float().cpu()
    prompts = cfg.validation_prompts or [s.caption for s in samples]
    if cfg.validation_prompts:
        return [(e, p) for e in embeds for p in prompts]
    return list(zip(embeds, prompts, strict=True))


@torch.no_grad()
def validate(trainer) -> Path | None:
    """Render the validation grid of ``trainer``'s current (EMA) weights on the main process."""
    acc, cfg = trainer.accelerator, trainer.config
    acc.wait_for_everyone()
    if not acc.is_main_process or not trainer.val_refs:
        acc.wait_for_everyone()
        return None
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = acc.unwrap_model(trainer.unet)
    pipe = StableDiffusionXLPipeline(
        vae=trainer.pipe.vae,
        text_encoder=trainer.pipe.text_encoder,
        text_encoder_2=trainer.pipe.text_encoder_2,
        tokenizer=trainer.pipe.tokenizer,
        tokenizer_2=trainer.pipe.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(trainer.pipe.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    rows = []
    devices = [acc.device] if acc.device.type == "cuda" else []
    was_training = unet.training
    unet.eval()
    with torch.random.fork_rng(devices=devices), trainer.ema_weights(), acc.autocast():
        for embed, prompt in trainer.val_refs:
            cond = embed.to(acc.device, unet.dtype)[None, None]  # [1, 1, D]
            ip = torch.cat([torch.zeros_like(cond), cond]) if cfg.validation_guidance > 1 else cond
            row = []
            for seed in cfg.validation_seeds:
                row.append(
                    pipe(
                        prompt=prompt,
                        ip_adapter_image_embeds=[ip],
                        num_inference_steps=cfg.validation_steps,
                        guidance_scale=cfg.validation_guidance,
                        width=cfg.resolution,
                        height=cfg.resolution,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    ).images[0]
                )
            rows.append(row)
    unet.train(was_training)
    path = trainer.out / "validation" / f"step-{trainer.global_step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(grid(rows), path)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            _save_png(im, path.parent / f"step-{trainer.global_step:07d}-r{r}-s{cfg.validation_seeds[c]}.png")
    trainer.log(f"validation grid written to {path}")
    acc.wait_for_everyone()
    return path


def grid(rows: list[list]):
    """Paste a rectangular list of equally sized PIL images into one image."""
    w, h = rows[0][0].size
    out = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            out.paste(im, (c * w, r * h))
    return out


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")
