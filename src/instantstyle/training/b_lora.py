"""B-LoRA training (Frenkel et al., arXiv 2403.14572): two LoRAs on one image, written for ``--method b-lora``.

Sources: the paper (Sec. 4.3-4.4) and the authors' ``train_dreambooth_b-lora_sdxl.py``
(yardenfren1996/B-LoRA, MIT) with the README's training command. The LoRA's layers, its file
format and its scoped injection belong to the method (``methods.b_lora``); this module trains it.

- Sec. 4.3-4.4: LoRA on ``to_q/to_k/to_v/to_out.0`` of both attentions (self and cross) of the
  transformer blocks of two neighbouring modules, ``blocks.BLORA_CONTENT_BLOCK`` (content) and
  ``blocks.BLORA_STYLE_BLOCK`` (style), trained jointly on one image with the prompt "A [v]",
  text encoders frozen. Defaults, each the authors': rank 64 (README), learning rate 5e-5
  constant, batch 1, 1000 steps, 1024 px (README), AdamW with weight decay 1e-4
  (``--adam_weight_decay``) and betas (0.9, 0.999), gradient clipping at norm 1.0
  (``--max_grad_norm``). The image is resized so its short side is the resolution, aspect ratio
  kept, no crop (the script's ``Resize(size)``; its centre crop is commented out); we round the
  long side to the UNet's size unit and give SDXL the real size as micro-conditioning (the
  script passes a square size).
- Precision (the README trains with ``--mixed_precision fp16``): the frozen base runs in its
  dtype, the LoRA weights train in fp32. On an fp16 base the loss is always scaled by a dynamic
  ``torch.amp.GradScaler`` (the object accelerate's fp16 mode creates): at 1024 px the gradient
  of the mean MSE per latent element is about 2e-5, subnormal in fp16, so without scaling a
  third of the LoRA gradients are exactly zero. bf16 and fp32 bases need no scaling.

Training writes ``DIR/pytorch_lora_weights.safetensors`` (diffusers' ``unet.``-prefixed PEFT keys),
``DIR/blora.json`` (settings, base model identity, losses) and, every ``checkpoint_every`` steps,
``DIR/checkpoint.pt`` (LoRA, optimizer, loss-scaler and RNG state) so ``resume=True`` continues
exactly (bit for bit where the kernels are deterministic: on CPU, torch's multi-threaded
convolution backward sums in a varying order, so two identical runs differ by float rounding
there). Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import blocks
from ..errors import InstantStyleError
from ..files import atomic_write, atomic_write_text
from ..images import image_hash, load_image
from ..methods.b_lora import (
    INFO_FILE,
    TRIGGER,
    WEIGHTS_FILE,
    architecture_fingerprint,
    lora_targets,
    scoped_lora,
    weights_fingerprint,
)

TRAIN_PROMPT = f"A {TRIGGER}"
CHECKPOINT_FILE = "checkpoint.pt"
EVAL_SAMPLES = 4  # fixed (timestep, noise) pairs for the before/after loss
WEIGHT_DECAY = 1e-4  # the authors' --adam_weight_decay (AdamW)
MAX_GRAD_NORM = 1.0  # the authors' --max_grad_norm
INIT_LOSS_SCALE = 2.0**16  # torch.amp.GradScaler's default initial scale


def _peft_state(unet, adapter_name: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {
        k: v.detach().float().cpu().contiguous()
        for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()
    }


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    eval_loss_before: float  # mean loss on fixed (timestep, noise) pairs before training
    eval_loss_after: float
    losses: list[float]  # training loss per step
    seconds: float  # the whole call
    step_seconds: float  # mean time of one optimisation step in this call


def training_size(width: int, height: int, size: int, unit: int) -> tuple[int, int]:
    """Short side ``size``, aspect ratio kept, the long side rounded to a multiple of ``unit``."""
    short, long_ = min(width, height), max(width, height)
    other = max(unit, round(size * long_ / short / unit) * unit)
    return (other, size) if width > height else (size, other)


def _prepare_image(image: Image.Image, size: int, unit: int) -> Image.Image:
    """Resized so the short side is ``size`` (aspect kept, no crop), as the authors' ``Resize(size)``."""
    return image.resize(training_size(*image.size, size, unit), Image.BICUBIC)


def precision(unet) -> str:
    """The precision B-LoRA trains at on this UNet: its dtype (``fp16`` scales the loss)."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(unet.dtype, "no")


class Backprop:
    """Back-propagation of the training loss at the base's precision; the one place that decides it.

    fp16: the loss is multiplied by a dynamic ``torch.amp.GradScaler`` scale before ``backward``,
    the gradients are divided by it again (``unscale_``) before clipping, and a step whose
    gradients overflowed is skipped while the scale is lowered, as accelerate's fp16 mode does.
    bf16 / fp32: the same calls with the scaler disabled (scale 1).
    """

    def __init__(self, unet, optimizer, params, max_grad_norm: float | None = MAX_GRAD_NORM):
        self.mode = precision(unet)
        device = next(unet.parameters()).device.type
        self.scaler = torch.amp.GradScaler(device, init_scale=INIT_LOSS_SCALE, enabled=self.mode == "fp16")
        self.optimizer, self.params, self.max_grad_norm = optimizer, params, max_grad_norm

    def gradients(self, loss: torch.Tensor) -> None:
        """``backward`` of the (scaled) loss; leaves the true, unscaled gradients in ``param.grad``."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)

    def step(self) -> None:
        """Clip, step (skipped by the scaler when a gradient is not finite), update the scale."""
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def _fixed_inputs(pipe, image: Image.Image, size: int):
    """The image latent (fp32) and the prompt conditioning at the training size."""
    from ..inversion import encode_latents, sdxl_added_cond

    unit = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    image = _prepare_image(image, size, unit)
    width, height = image.size
    latents = encode_latents(pipe, image, width, height).float()  # [1, C, h, w]
    with torch.no_grad():
        text, added = sdxl_added_cond(pipe, TRAIN_PROMPT, None, width, height, guidance=1.0)
    return latents, text, added


def _loss_function(unet, noise_sched, latents, text, added):
    def loss_at(t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0, noise = latents.expand(len(t), -1, -1, -1), noise.to(latents.device)
        noisy = noise_sched.add_noise(x0, noise, t.to(latents.device))
        target = (
            noise
            if noise_sched.config.prediction_type == "epsilon"
            else noise_sched.get_velocity(x0, noise, t)
        )
        n = len(t)
        cond = {k: (v.expand(n, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in added.items()}
        pred = unet(
            noisy.to(unet.dtype),
            t.to(latents.device),
            encoder_hidden_states=text.expand(n, -1, -1),
            added_cond_kwargs=cond,
        ).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    return loss_at


def lora_gradients(
    pipe, image, *, resolution: int, rank: int, lora_state: dict, timestep: int = 500, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The LoRA gradients of one training loss (fixed timestep and seeded noise), as ``train`` computes them.

    Same inputs, loss and ``Backprop`` as ``train`` at the pipe's precision, from the LoRA weights
    ``lora_state`` (PEFT keys); returns ``{PEFT key: fp32 gradient}``. ``pipe`` is left as found.
    """
    from diffusers import DDPMScheduler
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    unet = pipe.unet
    latents, text, added = _fixed_inputs(pipe, load_image(image, what="B-LoRA image"), resolution)
    loss_at = _loss_function(unet, DDPMScheduler.from_config(pipe.scheduler.config), latents, text, added)
    targets = lora_targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
    with scoped_lora(unet, targets, rank, rank, seed=seed) as params:
        for p in params:
            p.data = p.data.float()
        set_peft_model_state_dict(unet, lora_state, adapter_name="blora")
        optimizer = torch.optim.AdamW(params, lr=0.0)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
        Backprop(unet, optimizer, params).gradients(loss_at(torch.tensor([timestep]), noise))
        names = {id(p): n for n, p in unet.named_parameters()}
        keys = list(get_peft_model_state_dict(unet, adapter_name="blora"))
        grads = {}
        for p in params:
            name = names[id(p)].replace(".blora.", ".")
            grads[name] = p.grad.detach().float().cpu().clone()
        missing = set(keys) - set(grads)
        if missing:
            raise RuntimeError(f"no gradient for {sorted(missing)[0]}")
    return grads


def _check_settings(
    steps: int, rank: int, lr: float, checkpoint_every: int, weight_decay: float, max_grad_norm: float
) -> None:
    if steps < 1 or rank < 1 or not (lr > 0) or checkpoint_every < 1:
        raise InstantStyleError(
            f"--steps {steps}, --rank {rank}, --lr {lr}, --checkpoint-every {checkpoint_every}: "
            "all must be positive"
        )
    if not (weight_decay >= 0) or not (max_grad_norm >= 0):
        raise InstantStyleError(
            f"--weight-decay {weight_decay}, --max-grad-norm {max_grad_norm}: must be >= 0 "
            "(0 turns clipping off)"
        )


def _checkpoint_to_resume(out: Path, settings: dict, steps: int, resume: bool) -> dict | None:
    """The checkpoint ``resume`` continues from (checked against ``settings``), or None for a fresh run."""
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise InstantStyleError(
                f"--out '{out}' is not empty; pass --resume to continue its training or "
                "choose a new directory"
            )
        return None
    if not (out / CHECKPOINT_FILE).is_file():
        raise InstantStyleError(f"--resume: '{out}' has no {CHECKPOINT_FILE}; train without --resume first")
    checkpoint = torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    saved = json.loads(checkpoint["settings"])
    changed = [k for k in settings if saved.get(k) != settings[k] and k != "base"]
    if changed:
        raise InstantStyleError(
            f"--resume: the checkpoint in '{out}' was made with different {', '.join(changed)}; "
            "use the same image, base and settings (only --steps may change)"
        )
    if checkpoint["step"] > steps:
        raise InstantStyleError(
            f"--resume: the checkpoint is at step {checkpoint['step']}, past --steps {steps}"
        )
    return checkpoint


@dataclass
class _Loop:
    """The optimisation state of one ``train`` call (fresh or restored from a checkpoint)."""

    optimizer: torch.optim.Optimizer
    backprop: Backprop
    gen: torch.Generator  # draws each step's timestep and noise
    start: int = 0
    losses: list[float] = field(default_factory=list)  # training loss per step
    skipped: int = 0  # steps the loss scaler skipped (a gradient overflowed)
    before: float | None = None  # eval loss before training

    def restore(self, unet, checkpoint: dict) -> None:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(unet, checkpoint["lora"], adapter_name="blora")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.backprop.scaler.load_state_dict(checkpoint["scaler"])
        self.gen.set_state(checkpoint["generator"])
        self.start, self.losses = checkpoint["step"], list(checkpoint["losses"])
        self.before = float(checkpoint["eval_before"])
        self.skipped = int(checkpoint.get("skipped_steps", 0))

    def state(self, unet, step: int, settings: dict) -> dict:
        return {
            "step": step,
            "lora": _peft_state(unet, "blora"),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.backprop.scaler.state_dict(),
            "generator": self.gen.get_state(),
            "losses": self.losses,
            "eval_before": self.before,
            "skipped_steps": self.skipped,
            "settings": json.dumps(settings),
        }

    def step(self, loss_at, n_train: int, shape, step: int) -> float:
        """One optimisation step on a fresh (timestep, noise) draw; returns its loss."""
        t = torch.randint(0, n_train, (1,), generator=self.gen)
        noise = torch.randn(shape, generator=self.gen)
        loss = loss_at(t, noise)
        if not math.isfinite(loss.item()):
            raise InstantStyleError(
                f"B-LoRA training diverged at step {step} (loss {loss.item()}); lower --lr"
            )
        backprop = self.backprop
        backprop.gradients(loss)
        scale = backprop.scaler.get_scale() if backprop.scaler.is_enabled() else 1.0
        backprop.step()
        if backprop.scaler.is_enabled() and backprop.scaler.get_scale() < scale:
            self.skipped += 1  # a gradient overflowed at this scale: the scaler skipped the step
        self.losses.append(loss.item())
        return loss.item()


def train(
    pipe,
    image,
    out_dir: str | Path,
    *,
    steps: int = 1000,
    rank: int = 64,
    lr: float = 5e-5,
    weight_decay: float = WEIGHT_DECAY,
    max_grad_norm: float = MAX_GRAD_NORM,
    resolution: int | None = None,
    seed: int = 0,
    checkpoint_every: int = 100,
    resume: bool = False,
    base_id: str = "unknown",
    progress: bool = True,
) -> TrainResult:
    """Train a B-LoRA on one image with ``pipe`` (an SDXL pipeline); write it to ``out_dir``.

    The base trains at its own dtype (``precision``; fp16 always with loss scaling), the LoRA in
    fp32. ``pipe`` is left exactly as found. ``resume=True`` continues from ``out_dir/checkpoint.pt``
    (same image, base and settings; ``steps`` may be raised).
    """
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    unet, t0 = pipe.unet, time.perf_counter()
    # 1. Check inputs and the output directory before any model runs.
    _check_settings(steps, rank, lr, checkpoint_every, weight_decay, max_grad_norm)
    image = load_image(image, what="B-LoRA image")
    size = resolution or pipe.default_sample_size * pipe.vae_scale_factor
    unit = pipe.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if size % unit:
        raise InstantStyleError(f"--resolution {size}: must be a multiple of {unit} for this model")
    out = Path(out_dir)
    settings = {
        "rank": rank,
        "lora_alpha": rank,
        "lr": lr,
        "weight_decay": weight_decay,
        "max_grad_norm": max_grad_norm,
        "resolution": size,
        "seed": seed,
        "prompt": TRAIN_PROMPT,
        "trigger": TRIGGER,
        "image_sha256": image_hash(image),
        "base": base_id,
        "architecture": architecture_fingerprint(unet.config),
        "weights": weights_fingerprint(unet),
        "precision": precision(unet),
        "content_block": blocks.BLORA_CONTENT_BLOCK,
        "style_block": blocks.BLORA_STYLE_BLOCK,
    }
    checkpoint = _checkpoint_to_resume(out, settings, steps, resume)
    out.mkdir(parents=True, exist_ok=True)

    # 2. What stays fixed: the image latent, the prompt embedding, the noise schedule, the eval set.
    latents, text, added = _fixed_inputs(pipe, image, size)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    n_train = noise_sched.config.num_train_timesteps
    eval_gen = torch.Generator().manual_seed(seed + 1)
    eval_t = torch.linspace(0, n_train - 1, EVAL_SAMPLES).long()
    eval_noise = torch.randn((EVAL_SAMPLES, *latents.shape[1:]), generator=eval_gen)
    loss_at = _loss_function(unet, noise_sched, latents, text, added)

    @torch.no_grad()
    def eval_loss() -> float:
        return float(loss_at(eval_t, eval_noise))  # one batch: the mean over the fixed pairs

    # 3. LoRA on both blocks, AdamW, the step loop with checkpoints.
    targets = lora_targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
    with scoped_lora(unet, targets, rank, rank, seed=seed) as params:
        for p in params:
            p.data = p.data.float()  # LoRA weights train in fp32 even on an fp16 base
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        loop = _Loop(
            optimizer, Backprop(unet, optimizer, params, max_grad_norm), torch.Generator().manual_seed(seed)
        )
        if checkpoint is not None:
            loop.restore(unet, checkpoint)
        else:
            loop.before = eval_loss()
        bar = tqdm(
            range(loop.start, steps), desc="B-LoRA", initial=loop.start, total=steps, disable=not progress
        )
        loop_start = time.perf_counter()
        for step in bar:
            bar.set_postfix(loss=f"{loop.step(loss_at, n_train, latents.shape, step):.4f}")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                with atomic_write(out / CHECKPOINT_FILE) as tmp:
                    torch.save(loop.state(unet, step + 1, settings), tmp)
        step_seconds = (time.perf_counter() - loop_start) / max(steps - loop.start, 1)
        after = eval_loss()
        weights = {f"unet.{k}": v for k, v in _peft_state(unet, "blora").items()}

    # 4. Write the LoRA and its record.
    with atomic_write(out / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp))
    losses = loop.losses
    info = {
        **settings,
        "steps": steps,
        "eval_loss_before": loop.before,
        "eval_loss_after": after,
        "final_loss": losses[-1] if losses else None,
        "skipped_steps": loop.skipped,
        "format": "instantstyle-blora/1",
    }
    atomic_write_text(out / INFO_FILE, json.dumps(info, indent=2))
    return TrainResult(out, steps, loop.before, after, losses, time.perf_counter() - t0, step_seconds)
