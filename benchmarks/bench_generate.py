"""Seconds per image and peak memory: stock diffusers vs InstantStyle's fast path, in ONE process.

What it does, in order:
1. Builds the full-size SDXL architecture with random weights directly on the device (UNet 2.567 B,
   both CLIP text encoders, the VAE, the ViT-bigG image encoder, an IP-Adapter in the h94 layout:
   1280-d CLIP -> 4 x 2048 tokens, attached with diffusers' ``load_ip_adapter``). Weights do not
   change the cost, so nothing is downloaded. ``--tiny`` uses the tiny test model on the CPU.
2. Prepares one request per (preset, batch): prompt, seed, style embedding.
3. Times each row on the same inputs: stock diffusers (``StableDiffusionXLPipeline`` +
   ``set_ip_adapter_scale(dict)`` + ``ip_adapter_image_embeds``), eager, with
   ``torch.compile(pipe.unet)``, and with diffusers' documented compile recipe (channels-last UNet
   and VAE, ``torch.compile(..., mode="max-autotune", fullgraph=True)`` of the UNet and of
   ``vae.decode``), and ours (``InstantStyle.run`` with a fast-path setting). Synchronised timed
   calls after warm-up: median, min and spread (max - min, and the interquartile range); headline
   rows get >= 10 calls and are *interleaved* (A B C A B C ...), so drift or throttling hits
   every row alike. Peak memory of the timed calls; the relative L2 of the final latents against
   stock diffusers on the same preset and batch (fp16 noise for exact rows; the approximation's
   error otherwise, also against ``max-tuned``, the exact path it approximates) and the decoded
   image's PSNR against stock's float32 decode.
4. Inside one call (the last timed one) of each row, events split the time into text encoding,
   the rest before the loop, the loop (and per step: median and slowest) and decode + PIL (CUDA
   events on a GPU). The GPU's SM/memory clocks, power and temperature are sampled after each row
   and logged every second by ``nvidia-smi`` next to ``--json`` (``*.clocks.csv``).
5. Prints a Markdown table row by row (flushed) and rewrites ``--json`` after every row, so a
   run that is cut short still leaves its data.

Compiled artefacts are keyed on everything baked in at trace time (``fast.compiling.compile_key``:
mode, Inductor options, SDPA backend, fp8), so rows that differ in them never share code; the
stock rows compile their own ``torch.compile`` objects.

Rows are listed by priority; ``--budget-s`` skips the rest when the next row would not fit.

Examples:
    python benchmarks/bench_generate.py --json bench.json              # the full GPU run (< 6 min, H100)
    python benchmarks/bench_generate.py --tiny                         # CPU smoke run, seconds
    python benchmarks/bench_generate.py --only 'stock-style-b1,ours-fast-style-b1' --repeats 10
    python benchmarks/bench_generate.py --list                         # row ids and what they run
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import numpy as np
import torch

from instantstyle import fast as fast_path
from instantstyle import memory as memory_modes
from instantstyle.fast import compiling

# diffusers' own InstantStyle recipe (docs "Style and layout control"), the stock baseline.
STOCK_SCALES = {
    "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
    "style+layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
}
PROMPT = "a cat sitting on a windowsill, golden hour"
SEED = 1234


@dataclass
class Row:
    id: str
    impl: str  # "diffusers" | "ours"
    preset: str
    batch: int
    what: str
    options: fast_path.FastOptions | None = None
    memory: str = "normal"
    repeats: int = 3
    warmup: int = 1
    cuda_only: bool = False
    latent: bool = False  # stop before the VAE decode (output_type="latent"): the decode's share
    stock_compile: str = ""  # "default": torch.compile(pipe.unet); "recipe": diffusers' documented recipe
    group: str = ""  # rows of one group are timed interleaved (A B A B ...)
    result: dict = field(default_factory=dict)

    @property
    def compiled_stock(self) -> bool:
        return bool(self.stock_compile)


def plan(headline_repeats: int = 10, repeats: int = 3, b4_repeats: int = 3) -> list[Row]:
    """Every row, most important first (``--budget-s`` drops rows from the end)."""
    o = fast_path.FastOptions
    light = o(light_inactive=True, project_once=False)
    project = o(light_inactive=False, project_once=True)
    exact = fast_path.EXACT
    fuse = replace(exact, fuse_qkv=True)
    cl = replace(fuse, channels_last=True)
    fast = fast_path.FAST
    mx = fast_path.MAX
    tuned = fast_path.MAX_TUNED
    h = dict(repeats=headline_repeats, group="headline")
    rows = [
        # Headline, interleaved: stock eager, stock's documented compile recipe, max, max-tuned.
        Row("stock-style-b1", "diffusers", "style", 1, "stock diffusers, eager", **h),
        Row(
            "stock-recipe-style-b1",
            "diffusers",
            "style",
            1,
            "stock diffusers, documented recipe: channels-last + "
            "compile(max-autotune, fullgraph) of UNet and VAE decode",
            stock_compile="recipe",
            cuda_only=True,
            **h,
        ),
        Row("ours-max-style-b1", "ours", "style", 1, "ours, max: whole UNet compiled + CUDA graphs", mx, **h),
        Row(
            "ours-max-tuned-style-b1",
            "ours",
            "style",
            1,
            "ours, max-tuned: max + K/V once + per-preset graphs + "
            "bf16 compiled VAE + tuned Inductor (exact)",
            tuned,
            **h,
        ),
        # Approximations (opt-in): rel. L2 vs stock and vs max-tuned.
        Row(
            "ours-fp8-max-style-b1",
            "ours",
            "style",
            1,
            "approx: fp8-max (row-wise fp8 inside the compiled graph)",
            fast_path.FP8_MAX,
            repeats=repeats,
            group="approx",
        ),
        Row(
            "ours-cfg-trunc-style-b1",
            "ours",
            "style",
            1,
            "approx: cfg-trunc (last 40 % of steps without CFG)",
            fast_path.options_for("cfg-trunc"),
            repeats=repeats,
            group="approx",
        ),
        Row(
            "ours-deepcache-style-b1",
            "ours",
            "style",
            1,
            "approx: deepcache (deep blocks every other step)",
            fast_path.options_for("deepcache"),
            repeats=repeats,
            group="approx",
        ),
        Row(
            "ours-turbo-style-b1",
            "ours",
            "style",
            1,
            "approx: turbo (fp8-max + deepcache)",
            fast_path.options_for("turbo"),
            repeats=repeats,
            group="approx",
        ),
        # Exact pieces of max-tuned, each on its own over max.
        Row(
            "ours-max+ctx-style-b1",
            "ours",
            "style",
            1,
            "piece: max + cross-attention K/V once per call",
            replace(mx, context_kv=True),
            repeats=repeats,
            group="pieces",
        ),
        Row(
            "ours-max+prune-style-b1",
            "ours",
            "style",
            1,
            "piece: max + no work in inactive IP layers",
            replace(mx, prune_ip=True),
            repeats=repeats,
            group="pieces",
        ),
        Row(
            "ours-max+vae16-style-b1",
            "ours",
            "style",
            1,
            "piece: max + VAE twin bf16, channels-last, compiled",
            replace(mx, vae_decode="auto", compile_vae=True),
            repeats=repeats,
            group="pieces",
        ),
        Row(
            "ours-max+tuning-style-b1",
            "ours",
            "style",
            1,
            "piece: max + coordinate-descent tuning + cudnn.benchmark",
            replace(mx, inductor_tuning=True),
            repeats=repeats,
            group="pieces",
        ),
        Row("ours-max-tuned-style-b4", "ours", "style", 4, "ours, max-tuned", tuned, repeats=b4_repeats),
        Row(
            "ours-max-autotune-style-b1",
            "ours",
            "style",
            1,
            "ours, max-autotune (serve: autotuned kernels)",
            fast_path.MAX_AUTOTUNE,
            repeats=repeats,
        ),
        Row(
            "ours-max-tuned-style+layout-b1",
            "ours",
            "style+layout",
            1,
            "ours, max-tuned (a second preset: one capture and compile, then none)",
            tuned,
            repeats=repeats,
        ),
        Row(
            "stock-style+layout-b1", "diffusers", "style+layout", 1, "stock diffusers, eager", repeats=repeats
        ),
        Row(
            "ours-max-style+layout-b1",
            "ours",
            "style+layout",
            1,
            "ours, max (same graph: no recompile, no capture)",
            mx,
            repeats=repeats,
        ),
        Row(
            "ours-max-latent-style-b1",
            "ours",
            "style",
            1,
            "phase: max without the VAE decode (latents out)",
            mx,
            repeats=repeats,
            latent=True,
        ),
        Row(
            "ours-graphs-style-b1",
            "ours",
            "style",
            1,
            "piece: CUDA graphs on the eager UNet (+ fused QKV)",
            o(cuda_graphs=True, fuse_qkv=True),
            repeats=repeats,
            cuda_only=True,
        ),
        Row(
            "ours-unet-style-b1",
            "ours",
            "style",
            1,
            "piece: whole UNet compiled, no CUDA graphs",
            replace(mx, cuda_graphs=False),
            repeats=repeats,
        ),
        Row(
            "ours-fast-style-b1",
            "ours",
            "style",
            1,
            "ours, fast (regional compile of the transformer blocks)",
            fast,
            repeats=repeats,
        ),
        Row(
            "stock-compiled-style-b1",
            "diffusers",
            "style",
            1,
            "stock diffusers, torch.compile(unet)",
            repeats=repeats,
            stock_compile="default",
        ),
        Row(
            "ours-max+vae-style-b1",
            "ours",
            "style",
            1,
            "max + compiled VAE decoder",
            replace(mx, compile_vae=True),
            repeats=repeats,
        ),
        Row(
            "ours-fast+graphs-style-b1",
            "ours",
            "style",
            1,
            "regional compile (seconds, not minutes) + CUDA graphs",
            replace(fast, cuda_graphs=True),
            repeats=repeats,
            cuda_only=True,
        ),
        Row("stock-style-b4", "diffusers", "style", 4, "stock diffusers, eager", repeats=b4_repeats),
        Row("ours-max-style-b4", "ours", "style", 4, "ours, max", mx, repeats=b4_repeats),
        Row(
            "ours-low-style-b1",
            "ours",
            "style",
            1,
            "--memory low (model offload + VAE tiling), exact",
            exact,
            memory="low",
            repeats=2,
            cuda_only=True,
        ),
        Row(
            "ours-balanced-style-b1",
            "ours",
            "style",
            1,
            "--memory balanced (encoders streamed), max",
            mx,
            memory="balanced",
            repeats=2,
            cuda_only=True,
        ),
        Row(
            "ours-lowest-style-b1",
            "ours",
            "style",
            1,
            "--memory lowest (group offload, leaf level, streams)",
            exact,
            memory="lowest",
            repeats=1,
            warmup=1,
            cuda_only=True,
        ),
        # Pieces measured on 2026-11-26 (docs/performance.md); kept for reruns.
        Row(
            "ours-plain-style-b1",
            "ours",
            "style",
            1,
            "ours, plain (stock processors)",
            fast_path.PLAIN,
            repeats=repeats,
        ),
        Row(
            "ours-light-style-b1",
            "ours",
            "style",
            1,
            "piece: light inactive blocks only",
            light,
            repeats=repeats,
        ),
        Row(
            "ours-project-style-b1",
            "ours",
            "style",
            1,
            "piece: image projection once only",
            project,
            repeats=repeats,
        ),
        Row(
            "ours-exact-style-b1",
            "ours",
            "style",
            1,
            "light + projection once (CPU default)",
            exact,
            repeats=repeats,
        ),
        Row("ours-fuse-style-b1", "ours", "style", 1, "... + fused QKV", fuse, repeats=repeats),
        Row("ours-cl-style-b1", "ours", "style", 1, "... + channels-last", cl, repeats=repeats),
        Row(
            "ours-fp8-style-b1",
            "ours",
            "style",
            1,
            "fast + fp8 linears (approximation)",
            fast_path.options_for("fp8"),
            repeats=repeats,
        ),
        Row("ours-fast-style+layout-b1", "ours", "style+layout", 1, "ours, fast", fast, repeats=repeats),
        Row("ours-fast-style-b4", "ours", "style", 4, "ours, fast", fast, repeats=b4_repeats),
        Row(
            "stock-style+layout-b4",
            "diffusers",
            "style+layout",
            4,
            "stock diffusers, eager",
            repeats=b4_repeats,
        ),
        Row("ours-max-style+layout-b4", "ours", "style+layout", 4, "ours, max", mx, repeats=b4_repeats),
        Row(
            "ours-flash-style-b1",
            "ours",
            "style",
            1,
            "exact + SDPA flash pinned",
            replace(cl, attention="flash"),
            repeats=repeats,
            cuda_only=True,
        ),
        Row(
            "ours-fast+resnets-style-b1",
            "ours",
            "style",
            1,
            "fast + compiled resnet blocks",
            replace(fast, compile_resnets=True),
            repeats=repeats,
        ),
    ]
    return rows


def load_model(args):
    from instantstyle import InstantStyle

    if args.tiny:
        return InstantStyle.from_pretrained(
            "tiny", device=args.device or "cpu", dtype="fp32", cache_dir=None, progress=False, speed="plain"
        )
    from instantstyle.testing.fullsize import full_instantstyle

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    return full_instantstyle(device, dtype, speed="plain")[0]


# ---------------------------------------------------------------------- timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phases:
    """Marks inside one call: CUDA events on a GPU (read after the call), else wall-clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks: list = []  # (name, event or perf_counter)

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def summary(self) -> dict:
        """Seconds: text encoding, other pre-loop work, loop, per step (median, max), decode + PIL."""
        if self.cuda:
            torch.cuda.synchronize()
        names = [n for n, _ in self.marks]
        if not {"start", "text", "latents", "end"} <= set(names):
            return {}

        def t(i):
            m = self.marks[i][1]
            return self.marks[0][1].elapsed_time(m) / 1e3 if self.cuda else m - self.marks[0][1]

        at = {n: t(i) for i, n in enumerate(names) if n != "step"}
        steps = [t(i) for i, n in enumerate(names) if n == "step"]
        if not steps:
            return {}
        edges = [at["latents"], *steps]
        per_step = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        return {
            "text_s": at["text"],
            "pre_loop_s": at["latents"] - at["text"],
            "loop_s": steps[-1] - at["latents"],
            "step_median_ms": 1e3 * statistics.median(per_step),
            "step_max_ms": 1e3 * max(per_step),
            "decode_s": at["end"] - steps[-1],
            "total_s": at["end"],
        }


@contextlib.contextmanager
def phase_marks(pipe, phases: Phases):
    """Mark the end of ``encode_prompt`` and of ``prepare_latents`` (the loop starts right after)."""
    saved = {}
    for name, label in (("encode_prompt", "text"), ("prepare_latents", "latents")):
        inner = getattr(pipe, name)
        saved[name] = inner

        def wrapped(*a, _inner=inner, _label=label, **kw):
            out = _inner(*a, **kw)
            phases.mark(_label)
            return out

        setattr(pipe, name, wrapped)
    try:
        yield
    finally:
        for name in saved:
            pipe.__dict__.pop(name, None)


class Runner:
    def __init__(self, model, args):
        from PIL import Image

        self.model, self.args = model, args
        self.device = model.device
        self.size = args.size or (64 if args.tiny else 1024)
        self.style = Image.new("RGB", (256, 256), (200, 60, 40))
        self.preps: dict = {}
        self.latents: dict = {}  # (preset, batch, row id) -> final latents
        self.images: dict = {}  # (preset, batch, row id) -> first decoded image (uint8 array)
        self.memory = "normal"
        self.stock_compiled: dict = {}  # "default" | "recipe" -> the compiled UNet (and VAE decode)

    def prep(self, preset, batch):
        key = (preset, batch)
        if key not in self.preps:
            m = self.model
            req = m.request(
                prompt=PROMPT,
                mode=preset,
                seed=SEED,
                steps=self.args.steps,
                guidance=5.0,
                width=self.size,
                height=self.size,
                num_images=batch,
            )
            self.preps[key] = m.prepare(req, style_images=[self.style])
        return self.preps[key]

    def _stock_compiled(self, kind: str):
        """``default``: ``torch.compile(pipe.unet)``. ``recipe``: diffusers' documented recipe
        (docs "Accelerate inference of text-to-image diffusion models" / torch 2.0 page):
        channels-last UNet and VAE, ``torch.compile(unet, mode="max-autotune", fullgraph=True)``
        and the same for ``vae.decode``."""
        if kind not in self.stock_compiled:
            compiling.configure_dynamo()
            pipe = self.model.pipe
            if kind == "default":
                self.stock_compiled[kind] = (torch.compile(pipe.unet), None)
            else:
                self.stock_compiled[kind] = (
                    torch.compile(pipe.unet, mode="max-autotune", fullgraph=True),
                    torch.compile(pipe.vae.decode, mode="max-autotune", fullgraph=True),
                )
        return self.stock_compiled[kind]

    @contextlib.contextmanager
    def _stock(self, row: Row):
        pipe = self.model.pipe
        unet, decode = pipe.unet, pipe.vae.__dict__.get("decode")
        if row.stock_compile == "recipe":
            with torch.inference_mode(False), torch.no_grad():
                unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
        if row.stock_compile:
            compiled_unet, compiled_decode = self._stock_compiled(row.stock_compile)
            pipe.unet = compiled_unet
            if compiled_decode is not None:
                pipe.vae.decode = compiled_decode
        pipe.set_ip_adapter_scale(STOCK_SCALES[row.preset])
        try:
            yield
        finally:
            pipe.set_ip_adapter_scale(0.0)
            pipe.unet = unet
            if decode is None:
                pipe.vae.__dict__.pop("decode", None)
            if row.stock_compile == "recipe":
                with torch.inference_mode(False), torch.no_grad():
                    unet.to(memory_format=torch.contiguous_format)
                    pipe.vae.to(memory_format=torch.contiguous_format)

    def call(self, row: Row, phases: Phases | None = None):
        """One generation; returns the final latents and the first image (or None)."""
        prep = self.prep(row.preset, row.batch)
        grabbed = {}

        def grab(_pipe, i, _t, kw):
            grabbed["latents"] = kw["latents"]
            if phases is not None:
                phases.mark("step")
            return kw

        extra = dict(callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"])
        if row.latent:
            extra["output_type"] = "latent"
        pipe = self.model.pipe
        marks = phase_marks(pipe, phases) if phases is not None else contextlib.nullcontext()
        if phases is not None:
            phases.mark("start")
        with marks:
            if row.impl == "diffusers":
                with self._stock(row), torch.inference_mode():
                    images = pipe(
                        prompt=PROMPT,
                        ip_adapter_image_embeds=prep.ip_embeds,
                        num_inference_steps=self.args.steps,
                        guidance_scale=5.0,
                        width=prep.width,
                        height=prep.height,
                        num_images_per_prompt=row.batch,
                        generator=prep.generator(),
                        **extra,
                    ).images
            else:
                self.model.speed = row.options
                images = self.model.run(pipe, prep, **extra)
        if phases is not None:
            phases.mark("end")
        first = None if row.latent else np.asarray(images[0]).copy()
        return grabbed["latents"], first

    def captures(self) -> int:
        cache = self.model.pipe.unet.__dict__.get("_instantstyle_graphs")
        return cache.captures if cache is not None else 0

    def graphs_failed(self):
        cache = self.model.pipe.unet.__dict__.get("_instantstyle_graphs")
        return cache.failed if cache is not None else None

    def recover(self):
        """Undo what an interrupted call may leave behind (the VAE upcast to float32)."""
        vae = self.model.pipe.vae
        if vae.dtype != self.model.dtype and self.memory == "normal":
            vae.to(dtype=self.model.dtype)

    def set_memory(self, mode):
        """Rows run in MEMORY_ORDER: "low" (accelerate hooks) can be undone; group offloading
        ("balanced", "lowest") cannot in diffusers 0.42, but "lowest" extends "balanced"."""
        if mode == self.memory:
            return
        pipe = self.model.pipe
        if self.memory in ("balanced", "lowest") and not (self.memory == "balanced" and mode == "lowest"):
            raise RuntimeError(
                f"cannot leave --memory {self.memory} (group offloading); rows run normal, low, "
                "balanced, lowest"
            )
        if self.memory == "low":  # back to everything on the GPU
            pipe.remove_all_hooks()
            memory_modes.vae_tiles(pipe.vae, small=False)
            pipe.to(self.device)
        if mode != "normal":
            memory_modes.apply_memory_mode(pipe, mode, self.device)
        self.memory = mode
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _failed(self, exc: Exception) -> str:
        traceback.print_exc()
        self.recover()  # e.g. a VAE left upcast by an error inside the decoder
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"

    def measure(self, row: Row, warmup: int, repeats: int) -> dict:
        return self.measure_group([row], warmup, repeats)[row.id]

    def measure_group(self, rows: list[Row], warmup: int | None = None, repeats: int | None = None) -> dict:
        """Warm every row up, then time them interleaved: A B C A B C ... (one memory mode)."""
        from torch._dynamo.utils import counters

        self.set_memory(rows[0].memory)
        warm, errors = {}, {}
        for row in rows:
            t0 = time.perf_counter()
            try:
                for _ in range(row.warmup if warmup is None else warmup):
                    self.call(row)
                sync(self.device)
            except Exception as exc:  # one failing row (e.g. no flash kernel) must not lose the others
                errors[row.id] = self._failed(exc)
            warm[row.id] = time.perf_counter() - t0
        n = max(r.repeats for r in rows) if repeats is None else repeats
        stats = {r.id: {"times": [], "graphs": 0, "captures": 0, "peak": 0.0, "reserved": 0.0} for r in rows}
        cuda = self.device.type == "cuda"
        outputs, phases = {}, {}
        for i in range(n):
            for row in rows:
                if i >= (row.repeats if repeats is None else repeats) or row.id in errors:
                    continue
                st = stats[row.id]
                graphs_before, captures_before = counters["stats"]["unique_graphs"], self.captures()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                last = i == (row.repeats if repeats is None else repeats) - 1
                ph = Phases(self.device) if last else None
                sync(self.device)
                t = time.perf_counter()
                try:
                    outputs[row.id] = self.call(row, ph)
                    sync(self.device)
                except Exception as exc:
                    errors[row.id] = self._failed(exc)
                    continue
                st["times"].append(time.perf_counter() - t)
                st["graphs"] += counters["stats"]["unique_graphs"] - graphs_before
                st["captures"] += self.captures() - captures_before
                if cuda:
                    # A replayed CUDA graph computes in its private pool without allocating: its
                    # activations show in the reserved peak, not the allocated one.
                    st["peak"] = max(st["peak"], torch.cuda.max_memory_allocated(self.device) / 2**30)
                    st["reserved"] = max(st["reserved"], torch.cuda.max_memory_reserved(self.device) / 2**30)
                if ph is not None:
                    phases[row.id] = ph.summary()
        results = {row_id: {"error": message} for row_id, message in errors.items()}
        for row in rows:
            if row.id in errors:
                continue
            st, (latents, first) = stats[row.id], outputs[row.id]
            latents = latents.float().cpu()
            key = (row.preset, row.batch, row.id)
            self.latents[key] = latents
            if first is not None:
                self.images[key] = first
            times = st["times"]
            median = statistics.median(times)
            q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), median, max(times)]
            out = {
                "s_per_call": median,
                "s_per_image": median / row.batch,
                "times": times,
                "min_s_per_image": min(times) / row.batch,
                "spread_s": max(times) - min(times),
                "iqr_s": q[2] - q[0],
                "n": len(times),
                "interleaved_with": [r.id for r in rows if r is not row],
                "peak_gib": st["peak"] if cuda else None,
                "peak_reserved_gib": st["reserved"] if cuda else None,
                "warmup_s": warm[row.id],
                "new_graphs_while_timed": st["graphs"],
                "captures_while_timed": st["captures"],
                "graphs_failed": self.graphs_failed(),
                "finite": bool(torch.isfinite(latents).all()),
                "phases": phases.get(row.id, {}),
                "gpu_clocks": gpu_clocks() if cuda else None,
            }
            stock = self.latents.get((row.preset, row.batch, f"stock-{row.preset}-b{row.batch}"))
            if stock is not None and (row.impl == "ours" or row.compiled_stock):
                out["rel_l2_vs_stock"] = rel_l2(latents, stock)
            stock_image = self.images.get((row.preset, row.batch, f"stock-{row.preset}-b{row.batch}"))
            if stock_image is not None and first is not None and (row.impl == "ours" or row.compiled_stock):
                out["psnr_db_vs_stock"] = psnr(first, stock_image)
            tuned = self.latents.get((row.preset, row.batch, f"ours-max-tuned-{row.preset}-b{row.batch}"))
            if tuned is not None and row.options is not None and not row.options.exact:
                out["rel_l2_vs_exact"] = rel_l2(latents, tuned)
            fast = self.latents.get((row.preset, row.batch, f"ours-fast-{row.preset}-b{row.batch}"))
            if fast is not None and row.options is not None and row.options.fp8:
                out["rel_l2_vs_fp16_fast"] = rel_l2(latents, fast)
            results[row.id] = out
        return results


def gpu_clocks() -> dict | None:
    """SM and memory clocks (MHz), power (W), temperature (C) and throttle reasons, from nvidia-smi."""
    import subprocess

    fields = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None
    return dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))


def start_clock_log(path: str):
    """``nvidia-smi`` sampling every second into ``path`` (stopped at exit), or None."""
    import atexit
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,"
            "clocks_throttle_reasons.active",
            "--format=csv",
            "-l",
            "1",
            "-f",
            path,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    return proc


def psnr(a, b) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


# ---------------------------------------------------------------------- report

HEADER = (
    "| row | what | preset | batch | s/image (median) | min / spread s, n | peak GiB (reserved) | ours/stock | "
    "rel. L2 vs stock (vs exact) | PSNR dB vs stock | warm-up s | recompiles / captures while timed |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_line(row: Row, stock_s: dict) -> str:
    r = row.result
    if "skipped" in r or "error" in r:
        return (
            f"| {row.id} | {row.what} | {row.preset} | {row.batch} | {r.get('skipped') or 'error: ' + r['error']} "
            "| | | | | | | |"
        )
    ratio = ""
    base = stock_s.get((row.preset, row.batch))
    if base and (row.impl == "ours" or row.compiled_stock):
        ratio = f"{r['s_per_image'] / base:.2f}"
    peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
    if r.get("peak_reserved_gib") is not None:
        peak += f" ({r['peak_reserved_gib']:.2f})"
    diff = r.get("rel_l2_vs_stock")
    diff = f"{diff:.1e}" if diff is not None else ""
    if "rel_l2_vs_exact" in r:
        diff += f" ({r['rel_l2_vs_exact']:.1e})"
    if "rel_l2_vs_fp16_fast" in r:
        diff += f" (vs fp16 fast {r['rel_l2_vs_fp16_fast']:.1e})"
    if not r.get("finite", True):
        diff += " NON-FINITE"
    if r.get("graphs_failed") and row.options is not None and row.options.cuda_graphs:
        diff += f" (graphs failed: {r['graphs_failed'][:80]})"
    spread = f"{r['min_s_per_image']:.3f} / {r['spread_s']:.3f}, {r['n']}"
    db = f"{r['psnr_db_vs_stock']:.1f}" if r.get("psnr_db_vs_stock") is not None else ""
    return (
        f"| {row.id} | {row.what} | {row.preset} | {row.batch} | {r['s_per_image']:.3f} | {spread} | {peak} | "
        f"{ratio} | {diff} | {db} | {r['warmup_s']:.1f} | {r['new_graphs_while_timed']} / "
        f"{r['captures_while_timed']} |"
    )


def phase_line(row: Row) -> str:
    """The phases of one call of the row, as a Markdown comment line under the table row."""
    p, c = row.result["phases"], row.result.get("gpu_clocks") or {}
    clocks = (
        f"; SM {c.get('clocks.sm')} MHz, mem {c.get('clocks.mem')} MHz, {c.get('power.draw')} W" if c else ""
    )
    return (
        f"<!-- {row.id}: text {p['text_s'] * 1e3:.0f} ms, pre-loop {p['pre_loop_s'] * 1e3:.0f} ms, loop "
        f"{p['loop_s']:.3f} s (step median {p['step_median_ms']:.1f} ms, max {p['step_max_ms']:.1f}), decode+PIL "
        f"{p['decode_s'] * 1e3:.0f} ms{clocks} -->"
    )


def environment(model, args) -> dict:
    import diffusers

    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "size": None,
        "steps": args.steps,
        "guidance": 5.0,
        "tiny": args.tiny,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if model.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(model.device)
        env["capability"] = list(torch.cuda.get_device_capability(model.device))
    return env


def write_json(path, env, rows, elapsed):
    if not path:
        return
    data = {
        "environment": env,
        "elapsed_s": elapsed,
        "rows": [
            {
                "id": r.id,
                "impl": r.impl,
                "preset": r.preset,
                "batch": r.batch,
                "what": r.what,
                "memory": r.memory,
                "options": r.options.as_dict() if r.options else None,
                **r.result,
            }
            for r in rows
        ],
    }
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


MEMORY_ORDER = {"normal": 0, "low": 1, "balanced": 2, "lowest": 3}


def compile_key(row: Row):
    """What a row compiles (rows sharing a key reuse the code), or None: the fast path's own key
    (``fast.compiling.compile_key``) plus what changes the traced graph (batch, processors)."""
    if row.compiled_stock:
        return ("stock", row.stock_compile, row.batch, row.preset)
    if row.options is None or not row.options.compile:
        return None
    o = row.options
    from instantstyle.fast.compiling import compile_key as fast_key

    return (
        fast_key(o.compile_scope, o),
        row.batch,
        o.fuse_qkv,
        o.compile_vae,
        o.vae_decode,
        o.prune_ip and row.preset,
        o.context_kv,
        o.cfg_truncation > 0,
        o.deepcache_interval > 1,
    )


def estimate(row: Row, stock_s: dict, compiled: set, steps_scale: float) -> float:
    """Rough seconds a row will take (to respect --budget-s)."""
    per_call = stock_s.get((row.preset, 1), 2.5 * steps_scale) * row.batch
    factor = {"normal": 1.0, "low": 2.5, "balanced": 1.2, "lowest": 8.0}[row.memory]
    if row.options is not None and (row.options.cuda_graphs or row.options.compile):
        factor *= 0.7
    est = (row.warmup + row.repeats) * per_call * factor
    key = compile_key(row)
    if key is not None and key not in compiled:
        autotune = row.stock_compile == "recipe" or (
            row.options is not None and row.options.compile_mode and "autotune" in row.options.compile_mode
        )
        whole = row.compiled_stock or row.options.compile_scope == "unet"
        est += 300.0 if autotune else 90.0 if whole else 40.0
        if row.options is not None and (row.options.cfg_truncation > 0 or row.options.deepcache_interval > 1):
            est += 60.0  # a second graph: batch 1, or the cached step
    return est


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny", action="store_true", help="tiny random model on the CPU (seconds; for the test suite)"
    )
    p.add_argument("--json", metavar="PATH", help="write results here (rewritten after every row)")
    p.add_argument(
        "--only", metavar="IDS", help="comma-separated row ids or globs, e.g. 'stock-*,ours-fast-style-b1'"
    )
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument(
        "--repeats", type=int, help="timed calls per row (default: 10 headline rows, 3 others and batch 4)"
    )
    p.add_argument("--warmup", type=int, help="untimed calls before timing each row (default 1)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30; 2 with --tiny)")
    p.add_argument("--size", type=int, help="image size in pixels (default 1024; 64 with --tiny)")
    p.add_argument("--device", help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="full-size model dtype")
    p.add_argument(
        "--budget-s",
        type=float,
        default=320.0,
        help="skip rows that would end after this many seconds from the start (default 320)",
    )
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.tiny else 30
    return args


def select(rows: list[Row], args, device: torch.device) -> list[Row]:
    if args.only:
        patterns = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [pat for pat in patterns if not any(fnmatch.fnmatch(r.id, pat) for r in rows)]
        if unknown:
            raise SystemExit(f"bench_generate: --only {','.join(unknown)} matches no row; see --list")
        rows = [r for r in rows if any(fnmatch.fnmatch(r.id, pat) for pat in patterns)]
    for r in rows:
        if args.repeats is not None:
            r.repeats = args.repeats
        if args.warmup is not None:
            r.warmup = args.warmup
        if args.tiny:
            r.repeats = min(r.repeats, 2)
        if r.options is not None and r.options.deepcache_interval > 1 and r.options.compile:
            r.warmup = max(r.warmup, 2)  # the second call traces the full step with its buffers made
        if r.options is not None and r.options.compile and device.type != "cuda":
            # No Triton/C++ code generation on a CPU smoke run: trace with dynamo, run eagerly.
            r.options = replace(r.options, compile_backend="eager", compile_mode=None)
        if r.compiled_stock and device.type != "cuda":
            r.cuda_only = True  # inductor's CPU code generation takes minutes on the tiny model's many shapes
    # Memory modes move models around, and group offloading cannot be undone: see Runner.set_memory.
    return sorted(rows, key=lambda r: MEMORY_ORDER[r.memory])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for r in plan():
            print(f"{r.id:28s} {r.what}")
        return 0
    start = time.perf_counter()
    model = load_model(args)
    runner = Runner(model, args)
    rows = select(plan(), args, runner.device)
    env = environment(model, args)
    env["size"] = runner.size
    env["build_s"] = time.perf_counter() - start
    print(
        f"# bench_generate: {env.get('gpu', env['device'])}, {env['dtype']}, {runner.size}px, {args.steps} steps, "
        f"guidance 5, torch {env['torch']}, diffusers {env['diffusers']}, {env['date']}",
        flush=True,
    )
    print(f"# models built in {env['build_s']:.1f} s", flush=True)
    print(HEADER, flush=True)
    stock_s: dict = {}
    compiled: set = set()
    steps_scale = args.steps / 30
    if args.json and runner.device.type == "cuda":
        start_clock_log(str(Path(args.json).with_suffix(".clocks.csv")))
    done: set = set()
    for row in rows:
        if row.id in done:
            continue
        # A group's rows (same memory mode, selected) are timed together, interleaved.
        group = [
            r
            for r in rows
            if row.group and r.group == row.group and r.memory == row.memory and r.id not in done
        ] or [row]
        elapsed = time.perf_counter() - start
        runnable = []
        for r in group:
            done.add(r.id)
            if r.cuda_only and runner.device.type != "cuda":
                r.result = {"skipped": "CUDA only"}
            elif (
                elapsed + sum(estimate(x, stock_s, compiled, steps_scale) for x in [*runnable, r])
                > args.budget_s
                and not args.tiny
            ):
                r.result = {"skipped": f"budget ({elapsed:.0f} s used of {args.budget_s:.0f})"}
            else:
                runnable.append(r)
        if runnable:
            results = runner.measure_group(runnable)
            for r in runnable:
                r.result = results[r.id]
                if "error" in r.result:
                    continue
                if r.impl == "diffusers" and not r.compiled_stock:
                    stock_s[(r.preset, r.batch)] = r.result["s_per_image"]
                if compile_key(r) is not None:
                    compiled.add(compile_key(r))
        for r in group:
            print(table_line(r, stock_s), flush=True)
            if r.result.get("phases"):
                print(phase_line(r), flush=True)
        write_json(args.json, env, rows, time.perf_counter() - start)
    total = time.perf_counter() - start
    failed = [r.id for r in rows if "error" in r.result]
    skipped = [r.id for r in rows if "skipped" in r.result]
    print(
        f"# total {total:.1f} s; {len(rows) - len(failed) - len(skipped)} rows measured, "
        f"skipped: {', '.join(skipped) or 'none'}; failed: {', '.join(failed) or 'none'}",
        flush=True,
    )
    write_json(args.json, env, rows, total)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
