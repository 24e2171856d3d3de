"""B-LoRA (Frenkel et al., arXiv 2403.14572): implicit style-content separation with two LoRAs.

Sources: the paper (Sec. 4.3-4.5) and the authors' ``train_dreambooth_b-lora_sdxl.py`` and
``inference.py`` (yardenfren1996/B-LoRA, MIT) with the README's training command.

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
- Sec. 5 (style transfer by text): at generation only the style block's LoRA is loaded, with the
  trigger in the prompt ("... in [v] style"). ``lora_scale`` multiplies the LoRA update (the
  official ``--style_alpha`` scales both factors, so its alpha = our ``lora_scale ** 0.5``).
  Sampling defaults are the request's (the authors' ``inference.py`` uses the pipeline's).

Training writes ``DIR/pytorch_lora_weights.safetensors`` (diffusers' ``unet.``-prefixed PEFT keys),
``DIR/blora.json`` (settings, base model identity, losses) and, every ``checkpoint_every`` steps,
``DIR/checkpoint.pt`` (LoRA, optimizer, loss-scaler and RNG state) so ``resume=True`` continues
exactly (bit for bit where the kernels are deterministic: on CPU, torch's multi-threaded
convolution backward sums in a varying order, so two identical runs differ by float rounding
there). A LoRA is refused on a base whose UNet architecture or weights differ from the one it
was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import blocks
from ..errors import InstantStyleError
from ..images import image_hash, load_image
from . import _common

TRIGGER = "[v]"
TRAIN_PROMPT = f"A {TRIGGER}"
INFO_FILE = "blora.json"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ARCH_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
             "up_block_types", "mid_block_type", "transformer_layers_per_block", "attention_head_dim",
             "num_attention_heads", "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim",
             "projection_class_embeddings_input_dim", "use_linear_projection")
EVAL_SAMPLES = 4  # fixed (timestep, noise) pairs for the before/after loss
WEIGHT_DECAY = 1e-4  # the authors' --adam_weight_decay (AdamW)
MAX_GRAD_NORM = 1.0  # the authors' --max_grad_norm
INIT_LOSS_SCALE = 2.0**16  # torch.amp.GradScaler's default initial scale


# ---------------------------------------------------------------------- base model identity


def architecture_fingerprint(unet_config) -> str:
    """Hash of the UNet's architecture (config keys that shape the weights), from a config dict."""
    arch = {k: unet_config.get(k) for k in ARCH_KEYS}
    text = json.dumps(arch, sort_keys=True, default=list).replace("(", "[").replace(")", "]")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(unet) -> str:
    """Hash of a few weights (``conv_in`` and the style block's first projection), as fp16 bytes."""
    h = hashlib.sha256()
    for name in ("conv_in.weight", _targets(unet, [blocks.BLORA_STYLE_BLOCK])[0] + ".weight"):
        h.update(unet.get_parameter(name).detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def _targets(unet, module_names) -> list[str]:
    """The projection layers B-LoRA trains in ``module_names`` (``<layer>.attn{1,2}.to_*``)."""
    modules = {m.name: m for m in blocks.discover(unet)}
    missing = [n for n in module_names if n not in modules]
    if missing:
        raise InstantStyleError(f"this UNet has no {', '.join(missing)}; B-LoRA needs an SDXL-family UNet")
    return [f"{modules[n].layer_name(i)}.{attn}.{proj}" for n in module_names for i in range(modules[n].layers)
            for attn in ("attn1", "attn2") for proj in PROJECTIONS]


# ---------------------------------------------------------------------- scoped LoRA


@contextlib.contextmanager
def scoped_lora(unet, targets: list[str], rank: int, alpha: float, state_dict: dict | None = None,
                adapter_name: str = "blora", seed: int = 0) -> Iterator[list[torch.nn.Parameter]]:
    """Inject a PEFT LoRA into exactly ``targets`` for the block; yields its parameters.

    The LoRA's random initialisation (``lora_A``) comes from ``seed``, not from the global RNG.

    On exit the original ``Linear`` modules, the ``requires_grad`` flags and the model's attributes
    are put back, so the UNet is exactly as before (same module objects, same state dict).
    """
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import set_peft_model_state_dict
    except ImportError:
        raise InstantStyleError("B-LoRA needs peft: pip install 'instantstyle[train]'") from None

    originals = {name: unet.get_submodule(name) for name in targets}
    if any(isinstance(m, BaseTunerLayer) for m in originals.values()):
        raise InstantStyleError("this UNet already carries a LoRA on B-LoRA's layers; unload it first")
    grads = {n: p.requires_grad for n, p in unet.named_parameters()}
    attrs = dict(vars(unet))
    try:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=adapter_name)
        if state_dict is not None:
            result = set_peft_model_state_dict(unet, state_dict, adapter_name=adapter_name)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                raise InstantStyleError(f"B-LoRA weights do not fit this UNet (unexpected key {unexpected[0]})")
        yield [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    finally:
        for name, module in originals.items():
            parent, _, attr = name.rpartition(".")
            setattr(unet.get_submodule(parent), attr, module)
        for key in [k for k in vars(unet) if k not in attrs]:
            delattr(unet, key)
        for key, value in attrs.items():
            if vars(unet).get(key) is not value:
                setattr(unet, key, value)
        for n, p in unet.named_parameters():
            p.requires_grad_(grads[n])


def _peft_state(unet, adapter_name: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in
            get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}


# ---------------------------------------------------------------------- training


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    eval_loss_before: float  # mean loss on fixed (timestep, noise) pairs before training
    eval_loss_after: float
    losses: list[float]  # training loss per step
    seconds: float  # the whole call
    step_seconds: float  # mean time of one optimisation step in this call


def _atomic_save(obj, path: Path, save) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save(obj, tmp)
    os.replace(tmp, path)


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
        target = noise if noise_sched.config.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
        n = len(t)
        cond = {k: (v.expand(n, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in added.items()}
        pred = unet(noisy.to(unet.dtype), t.to(latents.device), encoder_hidden_states=text.expand(n, -1, -1),
                    added_cond_kwargs=cond).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    return loss_at


def lora_gradients(pipe, image, *, resolution: int, rank: int, lora_state: dict, timestep: int = 500,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """The LoRA gradients of one training loss (fixed timestep and seeded noise), as ``train`` computes them.

    Same inputs, loss and ``Backprop`` as ``train`` at the pipe's precision, from the LoRA weights
    ``lora_state`` (PEFT keys); returns ``{PEFT key: fp32 gradient}``. ``pipe`` is left as found.
    """
    from diffusers import DDPMScheduler
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    unet = pipe.unet
    latents, text, added = _fixed_inputs(pipe, load_image(image, what="B-LoRA image"), resolution)
    loss_at = _loss_function(unet, DDPMScheduler.from_config(pipe.scheduler.config), latents, text, added)
    targets = _targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
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


def train(pipe, image, out_dir: str | Path, *, steps: int = 1000, rank: int = 64, lr: float = 5e-5,
          weight_decay: float = WEIGHT_DECAY, max_grad_norm: float = MAX_GRAD_NORM,
          resolution: int | None = None, seed: int = 0, checkpoint_every: int = 100, resume: bool = False,
          base_id: str = "unknown", progress: bool = True) -> TrainResult:
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
    if steps < 1 or rank < 1 or not (lr > 0) or checkpoint_every < 1:
        raise InstantStyleError(f"--steps {steps}, --rank {rank}, --lr {lr}, --checkpoint-every {checkpoint_every}: "
                                "all must be positive")
    if not (weight_decay >= 0) or not (max_grad_norm >= 0):
        raise InstantStyleError(f"--weight-decay {weight_decay}, --max-grad-norm {max_grad_norm}: must be >= 0 "
                                "(0 turns clipping off)")
    image = load_image(image, what="B-LoRA image")
    size = resolution or pipe.default_sample_size * pipe.vae_scale_factor
    unit = pipe.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if size % unit:
        raise InstantStyleError(f"--resolution {size}: must be a multiple of {unit} for this model")
    out = Path(out_dir)
    settings = {"rank": rank, "lora_alpha": rank, "lr": lr, "weight_decay": weight_decay,
                "max_grad_norm": max_grad_norm, "resolution": size, "seed": seed,
                "prompt": TRAIN_PROMPT, "trigger": TRIGGER, "image_sha256": image_hash(image),
                "base": base_id, "architecture": architecture_fingerprint(unet.config),
                "weights": weights_fingerprint(unet), "precision": precision(unet),
                "content_block": blocks.BLORA_CONTENT_BLOCK, "style_block": blocks.BLORA_STYLE_BLOCK}
    checkpoint = None
    if resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise InstantStyleError(f"--resume: '{out}' has no {CHECKPOINT_FILE}; train without --resume first")
        checkpoint = torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        saved = json.loads(checkpoint["settings"])
        changed = [k for k in settings if saved.get(k) != settings[k] and k != "base"]
        if changed:
            raise InstantStyleError(f"--resume: the checkpoint in '{out}' was made with different {', '.join(changed)}; "
                                    "use the same image, base and settings (only --steps may change)")
        if checkpoint["step"] > steps:
            raise InstantStyleError(f"--resume: the checkpoint is at step {checkpoint['step']}, past --steps {steps}")
    elif out.exists() and any(out.iterdir()):
        raise InstantStyleError(f"--out '{out}' is not empty; pass --resume to continue its training or choose a new directory")
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
    targets = _targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
    with scoped_lora(unet, targets, rank, rank, seed=seed) as params:
        for p in params:
            p.data = p.data.float()  # LoRA weights train in fp32 even on an fp16 base
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        backprop = Backprop(unet, optimizer, params, max_grad_norm)
        gen = torch.Generator().manual_seed(seed)
        start, losses, skipped = 0, [], 0
        if checkpoint is not None:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(unet, checkpoint["lora"], adapter_name="blora")
            optimizer.load_state_dict(checkpoint["optimizer"])
            backprop.scaler.load_state_dict(checkpoint["scaler"])
            gen.set_state(checkpoint["generator"])
            start, losses, before = checkpoint["step"], list(checkpoint["losses"]), float(checkpoint["eval_before"])
            skipped = int(checkpoint.get("skipped_steps", 0))
        else:
            before = eval_loss()
        bar = tqdm(range(start, steps), desc="B-LoRA", initial=start, total=steps, disable=not progress)
        loop_start = time.perf_counter()
        for step in bar:
            t = torch.randint(0, n_train, (1,), generator=gen)
            noise = torch.randn(latents.shape, generator=gen)
            loss = loss_at(t, noise)
            if not math.isfinite(loss.item()):
                raise InstantStyleError(f"B-LoRA training diverged at step {step} (loss {loss.item()}); lower --lr")
            backprop.gradients(loss)
            scale = backprop.scaler.get_scale() if backprop.scaler.is_enabled() else 1.0
            backprop.step()
            if backprop.scaler.is_enabled() and backprop.scaler.get_scale() < scale:
                skipped += 1  # a gradient overflowed at this scale: the scaler skipped the step
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                state = {"step": step + 1, "lora": _peft_state(unet, "blora"), "optimizer": optimizer.state_dict(),
                         "scaler": backprop.scaler.state_dict(), "generator": gen.get_state(), "losses": losses,
                         "eval_before": before, "skipped_steps": skipped, "settings": json.dumps(settings)}
                _atomic_save(state, out / CHECKPOINT_FILE, torch.save)
        step_seconds = (time.perf_counter() - loop_start) / max(steps - start, 1)
        after = eval_loss()
        weights = {f"unet.{k}": v for k, v in _peft_state(unet, "blora").items()}

    # 4. Write the LoRA and its record.
    _atomic_save(weights, out / WEIGHTS_FILE, lambda obj, p: save_file(obj, str(p)))
    info = {**settings, "steps": steps, "eval_loss_before": before, "eval_loss_after": after,
            "final_loss": losses[-1] if losses else None, "skipped_steps": skipped,
            "format": "instantstyle-blora/1"}
    _atomic_save(info, out / INFO_FILE, lambda obj, p: p.write_text(json.dumps(obj, indent=2)))
    return TrainResult(out, steps, before, after, losses, time.perf_counter() - t0, step_seconds)


# ---------------------------------------------------------------------- generation


def read_info(lora_dir: str | Path, unet_config=None) -> dict:
    """``blora.json`` of a trained B-LoRA; with ``unet_config``, refuse another architecture."""
    path = Path(lora_dir)
    if not (path / INFO_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise InstantStyleError(f"--lora '{lora_dir}' is not a B-LoRA directory (needs {INFO_FILE} and {WEIGHTS_FILE}); "
                                "train one with `instantstyle train-blora --image REF --out DIR`")
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError):
        raise InstantStyleError(f"--lora '{lora_dir}': {INFO_FILE} is not valid JSON; train the LoRA again") from None
    if unet_config is not None and info.get("architecture") != architecture_fingerprint(unet_config):
        raise InstantStyleError(
            f"--lora '{lora_dir}' was trained on another base model ({info.get('base')}, UNet architecture "
            f"{info.get('architecture')}); this base's UNet is {architecture_fingerprint(unet_config)}; "
            "train a B-LoRA on this base with `instantstyle train-blora --base ...`")
    return info


def load_style(lora_dir: str | Path, unet) -> tuple[dict, dict[str, torch.Tensor]]:
    """The B-LoRA's record and its style block's weights only (PEFT keys), checked against ``unet``."""
    from safetensors.torch import load_file

    info = read_info(lora_dir, unet.config)
    if info.get("weights") != weights_fingerprint(unet):
        raise InstantStyleError(
            f"--lora '{lora_dir}' was trained on another base model ({info.get('base')}): same architecture but "
            "different weights; train a B-LoRA on this base with `instantstyle train-blora --base ...`")
    prefix = f"unet.{info['style_block']}."
    weights = load_file(str(Path(lora_dir) / WEIGHTS_FILE))
    style = {k.removeprefix("unet."): v for k, v in weights.items() if k.startswith(prefix)}
    if not style:
        raise InstantStyleError(f"--lora '{lora_dir}' has no weights for the style block {info['style_block']}")
    return info, style


def run(model, req, *, style_images=None, on_step=None):
    from ..pipeline import scoped_scheduler

    pipe, unet = model.pipe, model.pipe.unet
    # 1. Inputs: the style comes from the LoRA, not from an image.
    if style_images or req.style:
        raise InstantStyleError("--method b-lora takes its style from --lora DIR (trained with `instantstyle "
                                "train-blora`); remove --style")
    st = _common.setup(model, req)
    info, style = load_style(req.lora, unet)
    prompt = req.prompt if info["trigger"] in req.prompt else f"{req.prompt} in {info['trigger']} style"
    # 2. Only the style block's LoRA, for this call; the UNet is restored afterwards.
    targets = _targets(unet, [info["style_block"]])
    do_cfg = req.guidance > 1.0
    with _common.ip_adapter_off(model), scoped_lora(unet, targets, info["rank"], info["lora_alpha"], style), \
            scoped_scheduler(pipe, req.scheduler), torch.inference_mode():
        images = pipe(
            prompt=prompt, negative_prompt=req.negative_prompt,
            ip_adapter_image_embeds=_common.neutral_ip_embeds(model, do_cfg),
            num_inference_steps=req.steps, guidance_scale=req.guidance, width=st.width, height=st.height,
            num_images_per_prompt=req.num_images, generator=st.generator(),
            cross_attention_kwargs={"scale": req.lora_scale},
            callback_on_step_end=_common.step_callback(req.steps, on_step),
        ).images
    extra = {"prompt_used": prompt, "lora_image_sha256": info.get("image_sha256"), "lora_steps": info.get("steps"),
             "lora_block": info["style_block"]}
    return _common.finish(model, req, images, st, extra=extra)
