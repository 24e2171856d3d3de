"""Train an IP-Adapter on chosen UNet blocks (InstantStyle, arXiv 2404.02733, Sec. 4) with accelerate.

The recipe (IP-Adapter, arXiv 2308.06721): the base UNet, both text encoders, the VAE and the
image encoder are frozen; the trained parameters are the image projection and ``to_k_ip``/
``to_v_ip`` of the chosen blocks only (``layers.py`` explains what the other blocks get); the loss
is the noise-prediction MSE; 5% of samples drop the caption, 5% the image and 5% both, so
classifier-free guidance works at inference.

Distribution, mixed precision, gradient accumulation and checkpoint state (optimizer, scheduler,
RNG) are accelerate's: ``accelerate launch -m instantstyle train-adapter ...`` runs the same code on
one GPU, several GPUs or several nodes. Only the trained tensors go into checkpoints (a save hook
replaces accelerate's full-UNet dump), plus each process's data position.

Layout of ``OUT``::

    train_config.json        resolved config (``--config`` re-runs it)
    adapter.safetensors      final adapter, h94 layout (EMA weights with --ema)
    train_log.jsonl          step, loss, lr, images/s
    data_report.json         samples used / skipped, with examples
    checkpoints/checkpoint-0000500/   accelerate state + trained tensors + data positions
    validation/step-0000500.png       grid: rows = (reference, prompt), columns = seeds

Beside this module: ``checkpoints.py`` (that layout, resuming rules), ``cache.py`` (the
per-sample embedding cache), ``validation.py`` (the grids), ``layers.py`` (the trained layers
and the h94 export), ``data.py`` (datasets), ``config.py`` (``TrainConfig``).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import blocks, models
from ..errors import InstantStyleError
from ..files import atomic_write_text
from . import checkpoints, layers, validation
from . import data as data_mod
from .cache import TrainCache
from .checkpoints import ADAPTER_NAME, CHECKPOINTS, DONE_MARKER, latest_checkpoint
from .config import TrainConfig, make_config
from .dropout import apply_dropout, dropout_masks

# ---------------------------------------------------------------------- results


@dataclass
class TrainResult:
    out: Path
    adapter: Path | None  # None on non-main processes
    steps: int  # optimizer steps done in total (including resumed ones)
    losses: list[float] = field(default_factory=list)  # per optimizer step of this invocation
    data: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- the trainer


class AdapterTrainer:
    """One training run. ``AdapterTrainer(config).train()``; see the module docstring."""

    def __init__(
        self, config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None
    ):
        self.config = config
        self.progress = progress
        self._log = log
        self.out = Path(config.out)

    # ------------------------------------------------------------------ setup

    def log(self, msg: str) -> None:
        if self.accelerator.is_main_process or msg.startswith("skipped"):
            (self._log or (lambda m: print(f"instantstyle: {m}", flush=True)))(msg)

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        cfg = self.config
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            cfg.mixed_precision, torch.float32
        )
        if acc.is_main_process:
            checkpoints.check_out(self.out, cfg.resume, cfg.max_steps)
        acc.wait_for_everyone()

        # 1. Data first: an empty or missing dataset stops before any model loads.
        self.source = data_mod.open_source(cfg.data)
        self.log(
            f"data: {self.source.description}"
            + (f" ({self.source.stats.summary()})" if self.source.stats.skipped else "")
        )

        # 2. Frozen models; the training size defaults to the base model's native size.
        set_seed(cfg.seed, device_specific=True)
        self._load_models()
        if cfg.resolution is None:
            native = self.pipe.default_sample_size * self.pipe.vae_scale_factor
            self.config = cfg = cfg.model_copy(update={"resolution": native})  # recorded in train_config.json
        self.stream = data_mod.SampleStream(
            self.source, cfg.resolution, cfg.seed, acc.process_index, acc.num_processes, log=self.log
        )

        # 3. Trainable layers on the chosen blocks.
        unet = self.unet
        self.chosen = layers.chosen_processors(unet, cfg.blocks)
        init_sd = None
        if cfg.init:
            from .. import adapter as adapter_mod

            init_sd = adapter_mod.load_state_dict(models.resolve_file(cfg.init, "IP-Adapter (--init)"))
        clip_dim = self.image_encoder.config.projection_dim
        proj, kv, self.tokens = layers.initial_weights(
            unet, self.chosen, clip_dim, cfg.tokens, init_sd, cfg.seed
        )
        self.params = layers.install(unet, self.chosen, proj, kv, self.tokens)
        self.initial_trainable = {
            k: v.detach().clone() for k, v in layers.trainable_state(unet, self.chosen).items()
        }
        n_train = sum(p.numel() for p in self.params)
        self.log(
            f"training {len(self.chosen)} cross-attention layers + the image projection "
            f"({n_train / 1e6:.2f} M parameters); everything else frozen"
        )
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()

        # 4. Optimizer, schedule, EMA.
        self.optimizer = self._optimizer()
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            "constant_with_warmup", self.optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes
        )
        self.ema = None
        if cfg.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.ema_decay)
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(unet, self.optimizer, self.lr_scheduler)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.empty_prompt, self.empty_pooled = self._encode_text([""])
        model_key = (
            f"{models.canonical_id(cfg.base)}|{models.canonical_id(self.encoder_spec)}|{self.weight_dtype}"
        )
        self.cache = TrainCache(cfg.cache_dir, model_key) if cfg.cache_dir else None
        self.global_step = 0

    def _load_models(self) -> None:
        cfg, acc = self.config, self.accelerator
        self.pipe = models.load_base_pipeline(cfg.base, self.weight_dtype)  # any source, 'tiny' included
        if blocks.family(self.pipe.unet) != "sdxl":  # it trains with SDXL's two towers and time ids
            raise InstantStyleError(
                f"adapter training is implemented for SDXL bases; '{cfg.base}' is "
                f"{blocks.FAMILY_LABELS[blocks.family(self.pipe.unet)]}: use an SDXL base"
            )
        self.encoder_spec = encoder_spec = cfg.image_encoder or models.default_image_encoder(cfg.base)
        self.image_encoder, self.feature_extractor = models.load_image_encoder(
            encoder_spec, self.weight_dtype
        )
        self.unet = self.pipe.unet
        vae_dtype = (
            torch.float32
            if (self.weight_dtype == torch.float16 and self.pipe.vae.config.force_upcast)
            else self.weight_dtype
        )
        for m, dt in (
            (self.pipe.vae, vae_dtype),
            (self.pipe.text_encoder, self.weight_dtype),
            (self.pipe.text_encoder_2, self.weight_dtype),
            (self.image_encoder, self.weight_dtype),
        ):
            m.requires_grad_(False)
            m.eval()
            m.to(acc.device, dt)
        self.unet.to(acc.device, self.weight_dtype)
        self.unet.requires_grad_(False)

    def _optimizer(self):
        cfg = self.config
        if cfg.adam_8bit:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise InstantStyleError(
                    "--adam-8bit needs bitsandbytes, which is not installed; `pip install bitsandbytes` (CUDA), "
                    "or drop --adam-8bit"
                ) from None
            return bnb.optim.AdamW8bit(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------ checkpoint hooks

    def _save_hook(self, _models, weights, output_dir) -> None:
        weights.clear()  # accelerate would dump the whole (frozen) UNet; we keep the trained tensors only
        if self.accelerator.is_main_process:
            from safetensors.torch import save_file

            state = layers.trainable_state(self.accelerator.unwrap_model(self.unet), self.chosen)
            save_file(
                {k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                str(Path(output_dir) / "trainable.safetensors"),
            )

    def _load_hook(self, models_list, input_dir) -> None:
        from safetensors.torch import load_file

        models_list.clear()
        state = load_file(str(Path(input_dir) / "trainable.safetensors"))
        layers.load_trainable_state(self.accelerator.unwrap_model(self.unet), self.chosen, state)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        directory = self.out / CHECKPOINTS / f"checkpoint-{self.global_step:07d}"
        acc.save_state(str(directory))
        atomic_write_text(
            directory / f"data_state_{acc.process_index}.json",
            json.dumps({**self.stream.state_dict(), "stats": self.stream.stats.as_dict()}),
        )
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": self.global_step, "num_processes": acc.num_processes}
            atomic_write_text(directory / DONE_MARKER, json.dumps(state, indent=2))  # written last: complete
            checkpoints.prune(self.out, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return directory

    def resume(self) -> None:
        acc, spec = self.accelerator, self.config.resume
        directory = latest_checkpoint(self.out) if spec == "latest" else Path(spec)
        if directory is None:
            self.log(f"--resume latest: no checkpoint in {self.out / CHECKPOINTS}; starting from step 0")
            return
        if not (directory / DONE_MARKER).is_file():
            raise InstantStyleError(
                f"--resume '{directory}' is not a complete checkpoint (no {DONE_MARKER}); "
                "give another one or 'latest'"
            )
        state = json.loads((directory / DONE_MARKER).read_text())
        if state.get("num_processes", 1) != acc.num_processes:
            raise InstantStyleError(
                f"checkpoint '{directory}' was written by {state['num_processes']} processes, this run has "
                f"{acc.num_processes}; resume with the same number so every process continues at its data position"
            )
        acc.load_state(str(directory))
        data_state = json.loads((directory / f"data_state_{acc.process_index}.json").read_text())
        self.stream.load_state_dict(data_state)
        self.global_step = int(state["global_step"])
        for k in ("used", "missing_caption", "unreadable", "examples"):
            setattr(self.stream.stats, k, data_state["stats"][k])
        self.log(f"resumed from {directory} at step {self.global_step}")

    # ------------------------------------------------------------------ encoding

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=captions,
            device=self.accelerator.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        if len(captions) == 1 and captions == [""]:
            return prompt_embeds[0], pooled[0]
        return prompt_embeds, pooled

    @torch.no_grad()
    def encode_samples(self, samples: list[data_mod.Sample]) -> dict[str, torch.Tensor]:
        dev, vae = self.accelerator.device, self.pipe.vae
        pixels = torch.stack([s.pixels for s in samples]).to(dev, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # [B, 4, R/8, R/8]
        prompt_embeds, pooled = self._encode_text([s.caption for s in samples])
        clip_pixels = self.feature_extractor(
            images=[s.image for s in samples], return_tensors="pt"
        ).pixel_values
        image_embeds = self.image_encoder(
            clip_pixels.to(dev, self.image_encoder.dtype)
        ).image_embeds  # [B, D]
        time_ids = torch.tensor([s.time_ids(self.config.resolution) for s in samples], dtype=torch.float32)
        return {
            "latents": latents.to(self.weight_dtype),
            "prompt_embeds": prompt_embeds.to(self.weight_dtype),
            "pooled": pooled.to(self.weight_dtype),
            "image_embeds": image_embeds.to(self.weight_dtype),
            "time_ids": time_ids,
        }

    def _decode_or_cached(self, record: data_mod.Record):
        res = self.config.resolution
        if self.cache is None:
            return data_mod.decode(record, res)
        try:
            raw = record.read()
        except OSError as exc:
            raise InstantStyleError(f"image '{record.key}' cannot be read ({exc})") from None
        key = self.cache.key(hashlib.sha256(raw).hexdigest(), record.caption, res)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        sample = data_mod.decode(data_mod.Record(record.key, record.caption, data=raw), res)
        sample.cache_key = key
        return sample

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``batch_size`` usable samples as model inputs (cached where possible)."""
        items = [self.stream.next_usable(self._decode_or_cached) for _ in range(self.config.batch_size)]
        todo = [i for i, it in enumerate(items) if isinstance(it, data_mod.Sample)]
        if todo:
            enc = self.encode_samples([items[i] for i in todo])
            for j, i in enumerate(todo):
                entry = {k: enc[k][j] for k in TrainCache.KEYS}
                if self.cache is not None:
                    self.cache.put(items[i].cache_key, entry)
                items[i] = entry
        dev = self.accelerator.device
        return {k: torch.stack([it[k] for it in items]).to(dev) for k in TrainCache.KEYS}

    # ------------------------------------------------------------------ one step

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, dev = self.config, self.accelerator.device
        latents = batch["latents"].float()
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, device=dev)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        u = torch.rand(bsz)
        drop_text, drop_image = dropout_masks(u, cfg.text_dropout, cfg.image_dropout, cfg.both_dropout)
        prompt_embeds, pooled, image_embeds = apply_dropout(
            batch["prompt_embeds"],
            batch["pooled"],
            batch["image_embeds"],
            self.empty_prompt,
            self.empty_pooled,
            drop_text,
            drop_image,
        )
        wd = self.weight_dtype
        pred = self.unet(
            noisy.to(wd),
            timesteps,
            encoder_hidden_states=prompt_embeds.to(wd),
            added_cond_kwargs={
                "text_embeds": pooled.to(wd),
                "time_ids": batch["time_ids"].to(dev, wd),
                "image_embeds": [image_embeds.float()[:, None, :]],
            },  # [B, 1 image, D]
        ).sample
        return F.mse_loss(pred.float(), target.float())

    # ------------------------------------------------------------------ loop

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        self.setup()
        acc, cfg = self.accelerator, self.config
        if acc.is_main_process:
            cfg.model_copy(update={"resume": None}).save(self.out)
        if cfg.resume:
            self.resume()
        self.val_refs = (
            validation.references(self) if (cfg.validate_every or cfg.validation_prompts) else None
        )
        world_batch = cfg.batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.global_step,
            desc="train-adapter",
            unit="step",
            disable=not (self.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        losses: list[float] = []
        start = self.global_step
        log_path = self.out / "train_log.jsonl"
        ips = None
        try:
            while self.global_step < cfg.max_steps:
                t0 = time.perf_counter()
                step_loss = torch.zeros((), device=acc.device)
                for _ in range(cfg.gradient_accumulation_steps):
                    batch = self.next_batch()
                    with acc.accumulate(self.unet):
                        loss = self.loss(batch)
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm:
                            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    step_loss += loss.detach() / cfg.gradient_accumulation_steps
                if not acc.sync_gradients:
                    raise RuntimeError(
                        "gradient accumulation out of step"
                    )  # cannot happen: one sync per step
                if self.ema is not None:
                    self.ema.step(self.params)
                self.global_step += 1
                mean_loss = acc.gather(step_loss[None]).mean().item()
                losses.append(mean_loss)
                dt = time.perf_counter() - t0
                ips = world_batch / dt if ips is None else 0.9 * ips + 0.1 * world_batch / dt
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                bar.update(1)
                if acc.is_main_process and (
                    self.global_step % cfg.log_every == 0 or self.global_step == cfg.max_steps
                ):
                    with log_path.open("a") as f:
                        f.write(
                            json.dumps(
                                {
                                    "step": self.global_step,
                                    "loss": mean_loss,
                                    "lr": self.lr_scheduler.get_last_lr()[0],
                                    "images_per_s": ips,
                                }
                            )
                            + "\n"
                        )
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.validate_every and self.global_step % cfg.validate_every == 0:
                    validation.validate(self)
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every and self.global_step > start:
                self.save_checkpoint()  # the final step too, so a later --resume continues from it
        finally:
            bar.close()
        if cfg.validation_prompts and not (cfg.validate_every and self.global_step % cfg.validate_every == 0):
            validation.validate(self)
        adapter_path = self.save_adapter()
        stats = self._all_process_stats()
        if acc.is_main_process:
            atomic_write_text(self.out / "data_report.json", json.dumps(stats.as_dict(), indent=2) + "\n")
            self.log(f"data: {stats.summary()}")
            if adapter_path:
                self.log(f"adapter written to {adapter_path}")
        acc.wait_for_everyone()
        acc.end_training()
        # Free what still references gloo's work objects now, while the interpreter is alive: left
        # to interpreter shutdown, their destruction aborted a rank in ~1 of 8 two-process CPU runs
        # ("terminate called without an active exception", SIGABRT; 0 of 48 runs with this).
        gc.collect()
        return TrainResult(self.out, adapter_path, self.global_step, losses, stats.as_dict())

    def _all_process_stats(self) -> data_mod.DataStats:
        """Data counts summed over processes (a folder/manifest's caption scan is global: counted once)."""
        acc, mine = self.accelerator, self.stream.stats
        if acc.num_processes == 1:
            return mine
        counts = torch.tensor([mine.used, mine.unreadable, mine.missing_caption], device=acc.device)
        total = acc.gather(counts[None]).sum(0).tolist()
        stats = copy.deepcopy(mine)
        stats.used, stats.unreadable = int(total[0]), int(total[1])
        if isinstance(self.source, data_mod.ShardSource):
            stats.missing_caption = int(total[2])
        return stats

    @contextlib.contextmanager
    def ema_weights(self):
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def save_adapter(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        unet = acc.unwrap_model(self.unet)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.config.save_dtype]
        meta = {
            "format": "instantstyle.trained-adapter/1",
            "blocks": self.config.blocks,
            "trained_layers": str(len(self.chosen)),
            "steps": str(self.global_step),
            "untrained_layers": "zeros (no image branch)",
        }
        if self.ema is not None:
            layers.save_h94(
                layers.export_h94(unet, self.chosen, dtype), self.out / "adapter_noema.safetensors", meta
            )
        with self.ema_weights():
            return layers.save_h94(layers.export_h94(unet, self.chosen, dtype), self.out / ADAPTER_NAME, meta)


# ---------------------------------------------------------------------- the Python API


def train_adapter(config: TrainConfig | None = None, *, progress: bool = True, **params) -> TrainResult:
    """Python API: ``train_adapter(base=..., data=..., out=..., blocks="style", max_steps=1000)``."""
    cfg = config if config is not None else make_config(**params)
    if config is not None and params:
        cfg = make_config(**{**config.model_dump(), **params})
    return AdapterTrainer(cfg, progress=progress).train()
