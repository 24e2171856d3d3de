"""Peak GPU memory and seconds per image of each stylize mode, on full-size random-weight SDXL.

What it does, in order:
1. Builds the full-size SDXL architecture with random weights directly on the device in fp16 (UNet
   2.567 B, both CLIP text encoders, the VAE, the ViT-bigG image encoder, an ip-adapter_sdxl-shaped
   IP-Adapter, and one SDXL ControlNet made with ``ControlNetModel.from_unet`` on the UNet's config).
   Weights do not change memory or time, so nothing is downloaded. ``--tiny`` uses the tiny test
   model on the CPU (seconds; the numbers mean nothing there).
2. Runs each mode once at 1024 px through the library (``InstantStyle.generate``), after one short
   warm-up: txt2img, controlnet (canny), img2img (strength 0.8), inpaint (strength 0.99),
   plus (InstantStyle-Plus: DDIM inversion + tile ControlNet + two adapters), then
   plus-low (``--memory low``: model CPU offload + VAE tiling). The same ControlNet object serves the
   canny and tile roles (only one is resident, as in a real Plus run).
3. Reports ``torch.cuda.max_memory_allocated`` per mode (reset before each) and wall seconds;
   prints a Markdown table row by row and rewrites ``--json`` after every row.

Steps: 30 for every mode. Plus defaults to 30 inversion + 30 sampling steps here instead of its
50 + 50 to keep the whole run under the 150 s budget on one H100 (memory does not depend on the
step count; time per step does not either). ``--plus-steps 50`` for the real setting.

Examples:
    python benchmarks/bench_stylize.py --json stylize.json          # GPU, < 150 s on an H100
    python benchmarks/bench_stylize.py --tiny                       # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import torch  # noqa: E402

MODES = ("txt2img", "controlnet", "img2img", "inpaint", "plus", "plus-low")
PROMPT = "a lighthouse on a cliff at dusk"


def build_full(device: torch.device, dtype: torch.dtype):
    """Full-size SDXL parts + ControlNet with random weights, created on ``device`` in ``dtype``."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from instantstyle.models import image_processor
    from instantstyle.testing.tiny import _tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))  # offline; cost is per token, not per vocabulary entry
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            unet = UNet2DConditionModel(
                sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                layers_per_block=2, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5,
            )
            # Before the adapter is attached (its config would otherwise carry encoder_hid_dim_type).
            controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025, force_upcast=True,
            )
            common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
            text_encoder = CLIPTextModel(CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                hidden_act="quick_gelu", projection_dim=768, **common))
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                hidden_act="gelu", projection_dim=1280, **common))
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                patch_size=14, image_size=224, projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5))
    finally:
        torch.set_default_dtype(previous)
    for m in (unet, controlnet, vae, text_encoder, text_encoder_2, image_encoder):
        m.eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    return pipe, image_encoder, image_processor(224), random_adapter(unet, device, dtype), controlnet


@torch.no_grad()
def random_adapter(unet, device, dtype, clip_dim: int = 1280, tokens: int = 4) -> dict:
    """ip-adapter_sdxl's h94 layout (proj 1280 -> 4 x 2048, 70 to_k_ip/to_v_ip pairs), random, on device."""
    cross = unet.config.cross_attention_dim
    g = torch.Generator(device).manual_seed(5)

    def rnd(*shape, std):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * std).to(dtype)

    image_proj = {"proj.weight": rnd(tokens * cross, clip_dim, std=clip_dim**-0.5),
                  "proj.bias": rnd(tokens * cross, std=0.1),
                  "norm.weight": 1 + rnd(cross, std=0.1), "norm.bias": rnd(cross, std=0.1)}
    ip_adapter = {}
    for idx, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
            for key in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{idx}.{key}.weight"] = rnd(hidden, cross, std=cross**-0.5)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def load(args):
    """(InstantStyle, ControlNet ref to use) for the run."""
    from instantstyle import InstantStyle, control
    from instantstyle import adapter as adapter_mod
    from instantstyle.embeddings import EmbeddingCache

    if args.tiny:
        from instantstyle.testing.tiny import tiny_controlnet

        model = InstantStyle.from_pretrained("tiny", device="cpu", dtype="fp32", cache_dir=None, progress=False)
        controlnet = tiny_controlnet()
    else:
        device = torch.device("cuda")
        pipe, encoder, extractor, state_dict, controlnet = build_full(device, torch.float16)
        info = adapter_mod.inspect(state_dict)
        adapter_mod.attach(pipe, [state_dict], encoder, extractor)
        del state_dict
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        ids = {"base": "random-sdxl", "adapter": "random-ip-adapter", "image_encoder": "random-bigG"}
        model = InstantStyle(pipe, encoder, extractor, info, ids=ids, cache=EmbeddingCache(None))
    control.register(model, "bench-controlnet", controlnet)  # serves both the canny and the tile role
    return model


def inputs(size: int, tmp: Path) -> dict[str, str]:
    import numpy as np
    from PIL import Image

    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4: 3 * size // 4, size // 5: 4 * size // 5] = (230, 190, 40)
    a[..., 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    Image.fromarray(a).save(tmp / "content.png")
    Image.fromarray(np.roll(a, size // 3, axis=0)[..., ::-1].copy()).save(tmp / "style.png")
    m = np.zeros((size, size), np.uint8)
    m[:, size // 2:] = 255
    Image.fromarray(m).save(tmp / "mask.png")
    return {k: str(tmp / f"{k}.png") for k in ("content", "style", "mask")}


def request(mode: str, files: dict, steps: int, plus_steps: int) -> dict:
    cn = "bench-controlnet"
    base = dict(prompt=PROMPT, style=[files["style"]], steps=steps, seed=1234)
    if mode == "txt2img":
        return base
    if mode == "controlnet":
        return base | dict(content=files["content"], control=[f"canny={cn}"])
    if mode == "img2img":
        return base | dict(content=files["content"], strength=0.8)
    if mode == "inpaint":
        return base | dict(content=files["content"], mask=files["mask"])
    return base | dict(task="plus", content=files["content"], control=[f"tile={cn}"], steps=plus_steps,
                       inversion_steps=plus_steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test, seconds)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per mode (default 30; tiny: 2)")
    ap.add_argument("--plus-steps", type=int, default=None,
                    help="Plus inversion = sampling steps (default 30, the paper's is 50; tiny: 2)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list from {', '.join(MODES)}")
    ap.add_argument("--budget-s", type=float, default=140.0, help="skip the remaining modes past this many seconds")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --tiny on a CPU")
    steps = args.steps or (2 if args.tiny else 30)
    plus_steps = args.plus_steps or (2 if args.tiny else 30)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")

    t_start = time.perf_counter()
    cuda = not args.tiny
    model = load(args)
    build_s = time.perf_counter() - t_start
    device = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    result = {"device": device, "dtype": str(model.dtype), "size": model.native_size, "steps": steps,
              "plus_steps": plus_steps, "build_s": round(build_s, 1), "rows": []}
    print(f"built in {build_s:.1f} s on {device}; {model.native_size} px, {steps} steps (plus: {plus_steps} + "
          f"{plus_steps} inversion)\n")
    print("| mode | peak GiB | s/image | note |\n|---|---|---|---|", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        files = inputs(model.native_size, Path(tmp))
        if cuda:
            model.generate(prompt=PROMPT, style=[files["style"]], steps=2, seed=0)  # warm-up (kernels, allocator)
        for mode in modes:
            if time.perf_counter() - t_start > args.budget_s:
                row = {"mode": mode, "skipped": f"over the {args.budget_s:.0f} s budget"}
                result["rows"].append(row)
                print(f"| {mode} | - | - | skipped (budget) |", flush=True)
                continue
            row = {"mode": mode}
            if mode == "plus-low" and not cuda:
                row["skipped"] = "model CPU offload needs CUDA"
                result["rows"].append(row)
                print(f"| {mode} | - | - | skipped (needs CUDA) |", flush=True)
                continue
            try:
                if mode == "plus-low":
                    model.set_memory("low")
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                image = model.generate(**request(mode.removesuffix("-low"), files, steps, plus_steps))[0]
                if cuda:
                    torch.cuda.synchronize()
                row["s_per_image"] = round(time.perf_counter() - t0, 2)
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
                row["size"] = list(image.size)
                note = f"{image.width}x{image.height}"
            except Exception as exc:  # noqa: BLE001 - one failing mode must not lose the others' numbers
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                note = "ERROR " + row["error"]
                traceback.print_exc()
            result["rows"].append(row)
            print(f"| {mode} | {row.get('peak_gib') or '-'} | {row.get('s_per_image', '-')} | {note} |", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2))
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    print(f"\ntotal {result['total_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
