"""Seconds per image and peak memory: stock diffusers vs InstantStyle's fast path, in ONE process.

What it does, in order:
1. Builds the full-size SDXL architecture with random weights directly on the device (UNet 2.567 B,
   both CLIP text encoders, the VAE, the ViT-bigG image encoder, an IP-Adapter in the h94 layout:
   1280-d CLIP -> 4 x 2048 tokens, attached with diffusers' ``load_ip_adapter``). Weights do not
   change the cost, so nothing is downloaded. ``--tiny`` uses the tiny test model on the CPU.
2. Prepares one request per (preset, batch): prompt, seed, style embedding.
3. Times each row on the same inputs: stock diffusers (``StableDiffusionXLPipeline`` +
   ``set_ip_adapter_scale(dict)`` + ``ip_adapter_image_embeds``) and ours (``InstantStyle.run``
   with a fast-path setting). Median of N synchronised timed calls after warm-up; peak memory
   of the timed calls; the relative L2 of the final latents against stock diffusers on the same
   preset and batch (fp16 noise for exact rows; the approximation error for fp8).
4. Prints a Markdown table row by row (flushed) and rewrites ``--json`` after every row, so a
   run that is cut short still leaves its data.

Rows are listed by priority; ``--budget-s`` skips the rest when the next row would not fit.

Examples:
    python benchmarks/bench_generate.py --json bench.json              # the full GPU run (< 6 min, H100)
    python benchmarks/bench_generate.py --tiny                         # CPU smoke run, seconds
    python benchmarks/bench_generate.py --only 'stock-style-b1,ours-fast-style-b1' --repeats 10
    python benchmarks/bench_generate.py --list                         # row ids and what they run
"""

from __future__ import annotations

import argparse
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

import torch  # noqa: E402

from instantstyle import fastpath  # noqa: E402

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
    options: fastpath.FastOptions | None = None
    memory: str = "normal"
    repeats: int = 3
    warmup: int = 1
    cuda_only: bool = False
    latent: bool = False  # stop before the VAE decode (output_type="latent"): the decode's share
    compiled_stock: bool = False  # stock diffusers with torch.compile(pipe.unet)
    result: dict = field(default_factory=dict)


def plan(headline_repeats: int = 5, repeats: int = 3, b4_repeats: int = 2) -> list[Row]:
    """Every row, most important first (``--budget-s`` drops rows from the end)."""
    o = fastpath.FastOptions
    light = o(light_inactive=True, project_once=False)
    project = o(light_inactive=False, project_once=True)
    exact = fastpath.EXACT
    fuse = replace(exact, fuse_qkv=True)
    cl = replace(fuse, channels_last=True)
    fast = fastpath.FAST
    mx = fastpath.MAX
    rows = [
        Row("stock-style-b1", "diffusers", "style", 1, "stock diffusers, eager", repeats=headline_repeats),
        Row("ours-max-style-b1", "ours", "style", 1, "ours, max: whole UNet compiled + CUDA graphs", mx,
            repeats=headline_repeats),
        Row("stock-style+layout-b1", "diffusers", "style+layout", 1, "stock diffusers, eager", repeats=repeats),
        Row("ours-max-style+layout-b1", "ours", "style+layout", 1, "ours, max (same graph: no recompile, no capture)",
            mx, repeats=repeats),
        Row("ours-max-latent-style-b1", "ours", "style", 1, "phase: max without the VAE decode (latents out)", mx,
            repeats=repeats, latent=True),
        Row("ours-graphs-style-b1", "ours", "style", 1, "piece: CUDA graphs on the eager UNet (+ fused QKV)",
            o(cuda_graphs=True, fuse_qkv=True), repeats=repeats, cuda_only=True),
        Row("ours-unet-style-b1", "ours", "style", 1, "piece: whole UNet compiled, no CUDA graphs",
            replace(mx, cuda_graphs=False), repeats=repeats),
        Row("ours-fast-style-b1", "ours", "style", 1, "ours, fast (regional compile of the transformer blocks)", fast,
            repeats=repeats),
        Row("stock-compiled-style-b1", "diffusers", "style", 1, "stock diffusers, torch.compile(unet)",
            repeats=repeats, compiled_stock=True),
        Row("ours-max+vae-style-b1", "ours", "style", 1, "max + compiled VAE decoder",
            replace(mx, compile_vae=True), repeats=repeats),
        Row("ours-fast+graphs-style-b1", "ours", "style", 1, "regional compile (seconds, not minutes) + CUDA graphs",
            replace(fast, cuda_graphs=True), repeats=repeats, cuda_only=True),
        Row("stock-style-b4", "diffusers", "style", 4, "stock diffusers, eager", repeats=b4_repeats),
        Row("ours-max-style-b4", "ours", "style", 4, "ours, max", mx, repeats=b4_repeats),
        Row("ours-low-style-b1", "ours", "style", 1, "--memory low (model offload + VAE tiling), exact", exact,
            memory="low", repeats=2, cuda_only=True),
        Row("ours-balanced-style-b1", "ours", "style", 1, "--memory balanced (encoders streamed), max", mx,
            memory="balanced", repeats=2, cuda_only=True),
        Row("ours-lowest-style-b1", "ours", "style", 1, "--memory lowest (group offload, leaf level, streams)", exact,
            memory="lowest", repeats=1, warmup=1, cuda_only=True),
        # Pieces measured on 2026-11-26 (docs/performance.md); kept for reruns.
        Row("ours-plain-style-b1", "ours", "style", 1, "ours, plain (stock processors)", fastpath.PLAIN, repeats=repeats),
        Row("ours-light-style-b1", "ours", "style", 1, "piece: light inactive blocks only", light, repeats=repeats),
        Row("ours-project-style-b1", "ours", "style", 1, "piece: image projection once only", project, repeats=repeats),
        Row("ours-exact-style-b1", "ours", "style", 1, "light + projection once (CPU default)", exact, repeats=repeats),
        Row("ours-fuse-style-b1", "ours", "style", 1, "... + fused QKV", fuse, repeats=repeats),
        Row("ours-cl-style-b1", "ours", "style", 1, "... + channels-last", cl, repeats=repeats),
        Row("ours-fp8-style-b1", "ours", "style", 1, "fast + fp8 linears (approximation)",
            fastpath.options_for("fp8"), repeats=repeats),
        Row("ours-fast-style+layout-b1", "ours", "style+layout", 1, "ours, fast", fast, repeats=repeats),
        Row("ours-fast-style-b4", "ours", "style", 4, "ours, fast", fast, repeats=b4_repeats),
        Row("stock-style+layout-b4", "diffusers", "style+layout", 4, "stock diffusers, eager", repeats=b4_repeats),
        Row("ours-max-style+layout-b4", "ours", "style+layout", 4, "ours, max", mx, repeats=b4_repeats),
        Row("ours-flash-style-b1", "ours", "style", 1, "exact + SDPA flash pinned", replace(cl, attention="flash"),
            repeats=repeats, cuda_only=True),
        Row("ours-fast+resnets-style-b1", "ours", "style", 1, "fast + compiled resnet blocks",
            replace(fast, compile_resnets=True), repeats=repeats),
    ]
    return rows


def load_model(args):
    from instantstyle import InstantStyle
    if args.tiny:
        return InstantStyle.from_pretrained("tiny", device=args.device or "cpu", dtype="fp32", cache_dir=None,
                                            progress=False, speed="plain")
    from instantstyle.testing.fullsize import full_instantstyle

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    return full_instantstyle(device, dtype, speed="plain")[0]


# ---------------------------------------------------------------------- timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    def __init__(self, model, args):
        from PIL import Image

        self.model, self.args = model, args
        self.device = model.device
        self.size = args.size or (64 if args.tiny else 1024)
        self.style = Image.new("RGB", (256, 256), (200, 60, 40))
        self.preps: dict = {}
        self.latents: dict = {}  # (preset, batch, row id) -> final latents
        self.memory = "normal"
        self.stock_compiled = None  # torch.compile(pipe.unet), made by the first compiled stock row

    def prep(self, preset, batch):
        key = (preset, batch)
        if key not in self.preps:
            m = self.model
            req = m.request(prompt=PROMPT, mode=preset, seed=SEED, steps=self.args.steps, guidance=5.0,
                            width=self.size, height=self.size, num_images=batch)
            self.preps[key] = m.prepare(req, style_images=[self.style])
        return self.preps[key]

    def call(self, row: Row):
        """One generation; returns the final latents."""
        prep = self.prep(row.preset, row.batch)
        grabbed = {}

        def grab(_pipe, i, _t, kw):
            grabbed["latents"] = kw["latents"]
            return kw

        extra = dict(callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"])
        if row.latent:
            extra["output_type"] = "latent"
        pipe = self.model.pipe
        if row.impl == "diffusers":
            unet = pipe.unet
            if row.compiled_stock:  # the usual recipe: pipe.unet = torch.compile(pipe.unet)
                if self.stock_compiled is None:
                    fastpath.configure_dynamo()
                    self.stock_compiled = torch.compile(unet)
                pipe.unet = self.stock_compiled
            pipe.set_ip_adapter_scale(STOCK_SCALES[row.preset])
            try:
                with torch.inference_mode():
                    pipe(prompt=PROMPT, ip_adapter_image_embeds=prep.ip_embeds, num_inference_steps=self.args.steps,
                         guidance_scale=5.0, width=prep.width, height=prep.height, num_images_per_prompt=row.batch,
                         generator=prep.generator(), **extra)
            finally:
                pipe.set_ip_adapter_scale(0.0)
                pipe.unet = unet
        else:
            self.model.speed = row.options
            self.model.run(pipe, prep, **extra)
        return grabbed["latents"]

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
            raise RuntimeError(f"cannot leave --memory {self.memory} (group offloading); rows run normal, low, "
                               "balanced, lowest")
        if self.memory == "low":  # back to everything on the GPU
            pipe.remove_all_hooks()
            fastpath.vae_tiles(pipe.vae, small=False)
            pipe.to(self.device)
        if mode != "normal":
            fastpath.apply_memory_mode(pipe, mode, self.device)
        self.memory = mode
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def measure(self, row: Row, warmup: int, repeats: int) -> dict:
        from torch._dynamo.utils import counters

        self.set_memory(row.memory)
        t0 = time.perf_counter()
        for _ in range(warmup):
            self.call(row)
        sync(self.device)
        warm_s = time.perf_counter() - t0
        graphs_before = counters["stats"]["unique_graphs"]
        captures_before = self.captures()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        times, latents = [], None
        for _ in range(repeats):
            sync(self.device)
            t = time.perf_counter()
            latents = self.call(row)
            sync(self.device)
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        # A replayed CUDA graph computes in its private pool without allocating: its activations
        # show in the reserved peak, not the allocated one.
        reserved = torch.cuda.max_memory_reserved(self.device) / 2**30 if self.device.type == "cuda" else None
        latents = latents.float().cpu()
        self.latents[(row.preset, row.batch, row.id)] = latents
        median = statistics.median(times)
        out = {"s_per_call": median, "s_per_image": median / row.batch, "times": times, "peak_gib": peak,
               "peak_reserved_gib": reserved,
               "warmup_s": warm_s, "new_graphs_while_timed": counters["stats"]["unique_graphs"] - graphs_before,
               "captures_while_timed": self.captures() - captures_before,
               "graphs_failed": self.graphs_failed(),
               "finite": bool(torch.isfinite(latents).all())}
        stock = self.latents.get((row.preset, row.batch, f"stock-{row.preset}-b{row.batch}"))
        if stock is not None and (row.impl == "ours" or row.compiled_stock):
            out["rel_l2_vs_stock"] = rel_l2(latents, stock)
        fast = self.latents.get((row.preset, row.batch, f"ours-fast-{row.preset}-b{row.batch}"))
        if fast is not None and row.options is not None and row.options.fp8:
            out["rel_l2_vs_fp16_fast"] = rel_l2(latents, fast)
        return out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


# ---------------------------------------------------------------------- report

HEADER = ("| row | what | preset | batch | s/image | peak GiB (reserved) | ours/stock | rel. L2 vs stock | warm-up s | "
          "recompiles / captures while timed |\n|---|---|---|---|---|---|---|---|---|---|")


def table_line(row: Row, stock_s: dict) -> str:
    r = row.result
    if "skipped" in r or "error" in r:
        return f"| {row.id} | {row.what} | {row.preset} | {row.batch} | {r.get('skipped') or 'error: ' + r['error']} | | | | | |"
    ratio = ""
    base = stock_s.get((row.preset, row.batch))
    if base and (row.impl == "ours" or row.compiled_stock):
        ratio = f"{r['s_per_image'] / base:.2f}"
    peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
    if r.get("peak_reserved_gib") is not None:
        peak += f" ({r['peak_reserved_gib']:.2f})"
    diff = r.get("rel_l2_vs_stock")
    diff = f"{diff:.1e}" if diff is not None else ""
    if "rel_l2_vs_fp16_fast" in r:
        diff += f" (vs fp16 fast {r['rel_l2_vs_fp16_fast']:.1e})"
    if not r.get("finite", True):
        diff += " NON-FINITE"
    if r.get("graphs_failed") and row.options is not None and row.options.cuda_graphs:
        diff += f" (graphs failed: {r['graphs_failed'][:80]})"
    return (f"| {row.id} | {row.what} | {row.preset} | {row.batch} | {r['s_per_image']:.3f} | {peak} | {ratio} | "
            f"{diff} | {r['warmup_s']:.1f} | {r['new_graphs_while_timed']} / {r['captures_while_timed']} |")


def environment(model, args) -> dict:
    import diffusers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(model.device),
           "dtype": str(model.dtype), "size": None, "steps": args.steps, "guidance": 5.0, "tiny": args.tiny,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if model.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(model.device)
        env["capability"] = list(torch.cuda.get_device_capability(model.device))
    return env


def write_json(path, env, rows, elapsed):
    if not path:
        return
    data = {"environment": env, "elapsed_s": elapsed,
            "rows": [{"id": r.id, "impl": r.impl, "preset": r.preset, "batch": r.batch, "what": r.what,
                      "memory": r.memory, "options": r.options.as_dict() if r.options else None, **r.result}
                     for r in rows]}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


MEMORY_ORDER = {"normal": 0, "low": 1, "balanced": 2, "lowest": 3}


def compile_key(row: Row):
    """What a row compiles (rows sharing a key reuse the code), or None."""
    if row.compiled_stock:
        return ("stock", row.batch)
    if row.options is None or not row.options.compile:
        return None
    o = row.options
    return (o.compile_scope, row.batch, o.fuse_qkv, o.compile_mode, o.fp8, o.compile_vae)


def estimate(row: Row, stock_s: dict, compiled: set, steps_scale: float) -> float:
    """Rough seconds a row will take (to respect --budget-s)."""
    per_call = stock_s.get((row.preset, 1), 2.5 * steps_scale) * row.batch
    factor = {"normal": 1.0, "low": 2.5, "balanced": 1.2, "lowest": 8.0}[row.memory]
    if row.options is not None and (row.options.cuda_graphs or row.options.compile):
        factor *= 0.7
    est = (row.warmup + row.repeats) * per_call * factor
    key = compile_key(row)
    if key is not None and key not in compiled:
        est += 90.0 if key[0] in ("unet", "stock") else 40.0
    return est


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (seconds; for the test suite)")
    p.add_argument("--json", metavar="PATH", help="write results here (rewritten after every row)")
    p.add_argument("--only", metavar="IDS", help="comma-separated row ids or globs, e.g. 'stock-*,ours-fast-style-b1'")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--repeats", type=int, help="timed calls per row (default: 5 headline rows, 3 others, 2 batch-4)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing each row (default 1)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30; 2 with --tiny)")
    p.add_argument("--size", type=int, help="image size in pixels (default 1024; 64 with --tiny)")
    p.add_argument("--device", help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="full-size model dtype")
    p.add_argument("--budget-s", type=float, default=320.0,
                   help="skip rows that would end after this many seconds from the start (default 320)")
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
    print(f"# bench_generate: {env.get('gpu', env['device'])}, {env['dtype']}, {runner.size}px, {args.steps} steps, "
          f"guidance 5, torch {env['torch']}, diffusers {env['diffusers']}, {env['date']}", flush=True)
    print(f"# models built in {env['build_s']:.1f} s", flush=True)
    print(HEADER, flush=True)
    stock_s: dict = {}
    compiled: set = set()
    steps_scale = args.steps / 30
    for row in rows:
        elapsed = time.perf_counter() - start
        if row.cuda_only and runner.device.type != "cuda":
            row.result = {"skipped": "CUDA only"}
        elif elapsed + estimate(row, stock_s, compiled, steps_scale) > args.budget_s and not args.tiny:
            row.result = {"skipped": f"budget ({elapsed:.0f} s used of {args.budget_s:.0f})"}
        else:
            try:
                row.result = runner.measure(row, row.warmup, row.repeats)
            except Exception as exc:  # one failing row (e.g. no flash kernel) must not lose the others
                row.result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
                traceback.print_exc()
                runner.recover()  # e.g. a VAE left upcast by an error inside the decoder
                if runner.device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                if row.impl == "diffusers" and not row.compiled_stock:
                    stock_s[(row.preset, row.batch)] = row.result["s_per_image"]
                if compile_key(row) is not None:
                    compiled.add(compile_key(row))
        print(table_line(row, stock_s), flush=True)
        write_json(args.json, env, rows, time.perf_counter() - start)
    total = time.perf_counter() - start
    failed = [r.id for r in rows if "error" in r.result]
    skipped = [r.id for r in rows if "skipped" in r.result]
    print(f"# total {total:.1f} s; {len(rows) - len(failed) - len(skipped)} rows measured, "
          f"skipped: {', '.join(skipped) or 'none'}; failed: {', '.join(failed) or 'none'}", flush=True)
    write_json(args.json, env, rows, total)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
