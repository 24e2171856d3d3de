"""Training throughput and peak memory: IP-Adapter on the style block only vs on every block.

On CUDA it builds a FULL-SIZE random-weight SDXL UNet directly on the device (bf16; cost does not
depend on the weights), installs a full-size h94-layout adapter (ViT-bigG image embeddings:
1280-d, 2048-d cross-attention, 4 tokens) through ``instantstyle.training.layers`` -- the code
the trainer uses -- and times the training step of the trainer (accelerate bf16 autocast,
gradient checkpointing, AdamW, conditioning dropout, noise-prediction MSE) at 1024 px, batch 4.
Latents and text/image embeddings are random tensors fed directly: that is the trainer's
precomputed-embedding path (``--cache-dir``), so the VAE and the encoders are not part of a step.

    python benchmarks/bench_train.py --json bench_train.json      # CUDA, < 100 s on an H100
    python benchmarks/bench_train.py --tiny                         # CPU, seconds (tested)

Prints a Markdown table; ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

SDXL_CLIP_DIM = 1280  # ViT-bigG projection (h94 sdxl_models/image_encoder)
SDXL_POOLED = 1280  # text_encoder_2 projection


def build_unet(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from instantstyle.testing.fullsize import SDXL_UNET_CONFIG, on_device

    if tiny:
        from instantstyle.testing.tiny import CLIP_DIM, tiny_unet_config

        torch.manual_seed(0)
        return UNet2DConditionModel(**tiny_unet_config()).to(device, dtype), CLIP_DIM, CLIP_DIM
    with on_device(device, dtype):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    return unet, SDXL_CLIP_DIM, SDXL_POOLED


def reset_adapter(unet) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    unet.encoder_hid_proj = None
    unet.register_to_config(encoder_hid_dim_type=None)


def run_mode(unet, blocks: str, args, clip_dim: int, pooled_dim: int, device, mixed: str) -> dict:
    from accelerate import Accelerator

    from instantstyle.training import layers
    from instantstyle.training.dropout import apply_dropout, dropout_masks

    reset_adapter(unet)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    chosen = layers.chosen_processors(unet, blocks)
    proj, kv, tokens = layers.initial_weights(unet, chosen, clip_dim, 4, None, seed=0)
    params = layers.install(unet, chosen, proj, kv, tokens)
    n_params = sum(p.numel() for p in params)
    unet.enable_gradient_checkpointing()
    unet.train()
    acc = Accelerator(mixed_precision=mixed, cpu=not cuda)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    model, opt = acc.prepare(unet, opt)
    wd = next(p for p in unet.parameters() if not p.requires_grad).dtype

    b, lat = args.batch, args.resolution // 8
    if args.tiny:
        lat = args.resolution // 2  # the tiny VAE downsamples by 2
    gen = torch.Generator(device).manual_seed(0)
    latents = torch.randn(b, 4, lat, lat, device=device, generator=gen)
    text = torch.randn(b, 77, unet.config.cross_attention_dim, device=device, generator=gen)
    pooled = torch.randn(b, pooled_dim, device=device, generator=gen)
    image = torch.randn(b, clip_dim, device=device, generator=gen)
    time_ids = torch.tensor(
        [[args.resolution, args.resolution, 0, 0, args.resolution, args.resolution]] * b,
        device=device,
        dtype=torch.float32,
    )
    empty_text, empty_pooled = torch.zeros_like(text[0]), torch.zeros_like(pooled[0])

    def step():
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (b,), device=device)
        alpha = (1 - t.float() / 1000)[:, None, None, None]
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        dt, di = dropout_masks(torch.rand(b), 0.05, 0.05, 0.05)
        te, po, ie = apply_dropout(text, pooled, image, empty_text, empty_pooled, dt, di)
        pred = model(
            noisy.to(wd),
            t,
            encoder_hidden_states=te.to(wd),
            added_cond_kwargs={
                "text_embeds": po.to(wd),
                "time_ids": time_ids.to(wd),
                "image_embeds": [ie[:, None, :]],
            },
        ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    opt_bytes = sum(
        v.numel() * v.element_size()
        for s in opt.state_dict()["state"].values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    result = {
        "blocks": blocks,
        "trained_layers": len(chosen),
        "trainable_params_M": n_params / 1e6,
        "optimizer_state_GiB": opt_bytes / 2**30,
        "step_s": elapsed / args.steps,
        "images_per_s": b * args.steps / elapsed,
        "peak_memory_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    model = opt = None
    acc.free_memory()
    unet.disable_gradient_checkpointing()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny", action="store_true", help="tiny random UNet on CPU (seconds); for tests and smoke runs"
    )
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 1024; tiny: 32)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 4; tiny: 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 5; tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; tiny: 0)")
    p.add_argument("--modes", nargs="+", default=["style", "all"], help="--blocks specs to compare")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.resolution = args.resolution or (32 if tiny else 1024)
    args.batch = args.batch or (2 if tiny else 4)
    args.steps = args.steps or (1 if tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if tiny else 2)
    if not tiny and not torch.cuda.is_available():
        print("bench_train: no CUDA device; use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if tiny else "cuda")
    dtype, mixed = (torch.float32, "no") if tiny else (torch.bfloat16, "bf16")
    t0 = time.perf_counter()
    unet, clip_dim, pooled_dim = build_unet(tiny, device, dtype)
    build_s = time.perf_counter() - t0
    results = [run_mode(unet, m, args, clip_dim, pooled_dim, device, mixed) for m in args.modes]

    name = "tiny (CPU)" if tiny else torch.cuda.get_device_name(device)
    print(
        f"\n### IP-Adapter training step: {name}, {args.resolution} px, batch {args.batch}, "
        f"{'fp32' if tiny else 'bf16 autocast'}, gradient checkpointing, AdamW, {args.steps} timed steps\n"
    )
    print(
        "| --blocks | trained attn2 layers | trainable params (M) | AdamW state (GiB) | step (s) | images/s | peak memory (GiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        mem = "n/a" if r["peak_memory_GiB"] is None else f"{r['peak_memory_GiB']:.2f}"
        print(
            f"| {r['blocks']} | {r['trained_layers']} | {r['trainable_params_M']:.1f} | {r['optimizer_state_GiB']:.3f} "
            f"| {r['step_s']:.3f} | {r['images_per_s']:.2f} | {mem} |"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        line = (
            f"\n{a['blocks']} vs {b['blocks']}: {a['images_per_s'] / b['images_per_s']:.2f}x the throughput"
        )
        if a["peak_memory_GiB"] is not None:
            line += f", {b['peak_memory_GiB'] - a['peak_memory_GiB']:.2f} GiB less peak memory"
        line += f", {b['optimizer_state_GiB'] - a['optimizer_state_GiB']:.3f} GiB less optimizer state"
        print(line)
    if args.json:
        import diffusers

        payload = {
            "device": name,
            "resolution": args.resolution,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "dtype": "fp32" if tiny else "bf16",
            "gradient_checkpointing": True,
            "build_s": build_s,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
