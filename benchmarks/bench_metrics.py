"""What scoring costs: images per second and peak memory of each metric model, at the published sizes.

    python benchmarks/bench_metrics.py --tiny                  # CPU, the tiny random metric models, seconds
    python benchmarks/bench_metrics.py --images 64 --json m.json   # CUDA fp16: full-size random-weight models

The full-size models are built with random weights in the published architectures (CSD = OpenAI
CLIP ViT-L/14 + two 1024x768 heads; CLIP ViT-L/14 with its text tower; DINOv2 ViT-B/14): cost does
not depend on the weights, and nothing is downloaded. Each row scores ``--images`` 1024 px images
against one reference with that model's metrics only (preprocessing included, batches of 8).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch
from PIL import Image

ROWS = {"csd": ("csd_style", "csd_content"), "clip": ("clip_t",), "dino": ("dino_leakage",)}


def full_size(kind: str, device, dtype):
    """Random-weight models of the published architectures, on ``device``."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, Dinov2Config, Dinov2Model

    from instantstyle import models
    from instantstyle.metrics import csd, dino
    from instantstyle.testing.tiny_metrics import tiny_clip

    vit_l = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="quick_gelu",
    )
    if kind == "csd":
        model = csd.CSD(CLIPVisionConfig(**vit_l), embed_dim=768).to(device, dtype).eval()
        return model, models.image_processor(224)
    if kind == "clip":
        _tiny, tokenizer = tiny_clip()  # an offline tokenizer; the text tower's size is CLIP-L's
        text = dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            vocab_size=49408,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vit_l, projection_dim=768)).to(
            device, dtype
        )
        return model.eval(), tokenizer, models.image_processor(224)
    model = (
        Dinov2Model(
            Dinov2Config(
                hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518, patch_size=14
            )
        )
        .to(device, dtype)
        .eval()
    )
    return model, dino.image_processor()


def main(argv=None) -> int:
    from instantstyle.metrics.scorer import Item, Scorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny random metric models on the CPU")
    ap.add_argument("--images", type=int, default=None, help="images per row (default: 64, --tiny: 8)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    n = args.images or (8 if args.tiny else 64)
    rng = np.random.default_rng(0)
    size = 256 if args.tiny else 1024
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    reference = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    rows = []
    for kind, metrics in ROWS.items():
        scorer = Scorer(
            metrics, csd="tiny", clip="tiny", dino="tiny", device=device, dtype="fp16" if cuda else "fp32"
        )
        if not args.tiny:
            scorer.set_model(kind, *full_size(kind, device, dtype))
        scorer.load()
        params = sum(p.numel() for p in scorer._models[kind][0].parameters()) / 1e6
        scorer.score([Item(images[0], "warm-up", [reference])])  # first-call costs out of the timing
        scorer._cache.clear()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        scores = scorer.score([Item(im, f"a picture {i}", [reference]) for i, im in enumerate(images)])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append(
            {
                "model": kind,
                "metrics": list(metrics),
                "params_m": round(params, 1),
                "images": n,
                "images_per_s": round(n / seconds, 2),
                "peak_gib": None if peak is None else round(peak, 2),
                "finite": all(np.isfinite(s[m]) for s in scores for m in metrics),
            }
        )
        del scorer
    print(
        f"scoring cost ({'CUDA fp16, full-size random weights' if cuda else 'CPU fp32'}; {n} images of {size} px)\n"
    )
    print("| model | metrics | params (M) | images/s | peak GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(
            f"| {r['model']} | {', '.join(r['metrics'])} | {r['params_m']} | {r['images_per_s']} | {peak} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
