"""``InstantStyle``: load SDXL + an IP-Adapter once, then generate in the style of reference images.

Composes diffusers' stock ``StableDiffusionXLPipeline`` through its public extension points:
the IP-Adapter is attached with ``load_ip_adapter``, the style goes in as precomputed
``ip_adapter_image_embeds`` (so content subtraction and multi-reference mixing happen in CLIP
space, before the adapter's projection), and the block restriction is a per-processor scale set
inside ``adapter.scoped_scales`` for the duration of one call.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from . import adapter as adapter_mod
from . import blocks, embeddings, fastpath, injection, models, prompts
from .config import GenerateRequest, make_request
from .errors import InstantStyleError
from .fast import cfg as fast_cfg
from .images import DEFAULT_MAX_PIXELS, attach_metadata

StyleRef = str | Path | Image.Image | embeddings.Style


@dataclass
class Prepared:
    """Everything a diffusers pipeline call needs, resolved from a request."""

    request: GenerateRequest
    seed: int
    width: int
    height: int
    ip_embeds: list[torch.Tensor]  # one per loaded adapter, [2 or 1, M, D]
    scales: list[dict[str, float]]  # one per adapter slot: attn2 processor -> scale
    style_hashes: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # recorded in every output
    # What each ip_embeds/scales entry is (injection.SLOT_KINDS); entries past the loaded adapters
    # run as slots sharing its weights (injection.shared_slots).
    slots: list[str] = field(default_factory=lambda: ["style"])

    def generator(self) -> torch.Generator | list[torch.Generator]:
        """diffusers' meaning of a seed: a CPU generator, so images match across devices. In a batch,
        image i gets its own generator seeded ``seed + i`` (as A1111), so it is reproducible alone."""
        n = self.request.num_images
        if n == 1:
            return torch.Generator("cpu").manual_seed(self.seed)
        return [torch.Generator("cpu").manual_seed(self.seed + i) for i in range(n)]


class InstantStyle:
    """Style-preserving text-to-image on SDXL (InstantStyle, arXiv 2404.02733)."""

    def __init__(self, pipe, image_encoder, feature_extractor, adapter_info: adapter_mod.AdapterInfo, *,
                 ids: dict[str, str], content_text=None, cache: embeddings.EmbeddingCache | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, speed: str | fastpath.FastOptions | None = "auto"):
        self.pipe = pipe
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.adapter_info = adapter_info
        self.ids = ids  # base / adapter / image_encoder identifiers, recorded in outputs
        self.content_text = content_text  # optional (CLIPTextModelWithProjection, tokenizer)
        self.styles = embeddings.StyleEncoder(image_encoder, feature_extractor, ids["image_encoder"], cache, max_pixels)
        self.modules = blocks.discover(pipe.unet)
        self.speed = fastpath.options_for(speed, self.device)  # fast-path pieces used by run()
        self.memory = "normal"  # load-time memory layout (fastpath.MEMORY_MODES); see set_memory
        self._memory_device = self.device
        self._laid_out = pipe  # the pipeline whose offload hooks are current

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        base: str = models.DEFAULT_BASE,
        adapter: str | None = None,
        image_encoder: str | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
        content_text_encoder: str | None = None,
        vae: str | None = None,
        base_config: str | None = None,
        cache_dir: str | Path | None | bool = True,
        progress: bool = True,
        speed: str = "auto",
        memory: str = "auto",
        long_lived: bool = False,
        cfg_truncation: float | None = None,
        deepcache_interval: int | None = None,
        compile_cache: str | Path | None = None,
    ) -> InstantStyle:
        """Load base model, image encoder and IP-Adapter; check they fit together; attach.

        ``base``/``adapter``/``image_encoder`` take a local path, a Hub reference or ``tiny``
        (see ``instantstyle.models``); ``base`` may be a single ``.safetensors`` checkpoint (an SDXL
        finetune), read with ``from_single_file`` and the configs of ``base_config`` (default: the
        family's reference repository). ``vae`` replaces the base's VAE (a diffusers directory, Hub
        id or single file). ``cache_dir=True`` caches image embeddings on disk in the
        default place, a path puts them there, ``False``/``None`` keeps them in memory only.
        ``speed`` picks the fast path (``instantstyle.fastpath.options_for``: auto, plain, exact,
        graphs, fast, max, fp8; ``long_lived=True`` makes ``auto`` pick ``max`` on CUDA, for servers);
        ``memory`` = auto | normal | balanced | low | lowest (``fastpath.apply_memory_mode``;
        ``auto`` picks by the card's size, ``fastpath.auto_memory``). ``cfg_truncation`` and
        ``deepcache_interval`` add those approximations to any speed (``fastpath.options_for``);
        ``compile_cache`` keeps torch.compile's artefacts in that folder across restarts.
        """
        # 1. Device and dtype: CUDA fp16, MPS fp16, else CPU fp32; the fast path's options.
        dev, dt = models.device_and_dtype(device, dtype)
        if memory == "auto":
            memory = fastpath.auto_memory(dev)
        speed = fastpath.options_for(speed, dev, long_lived=long_lived, cfg_truncation=cfg_truncation,
                                     deepcache_interval=deepcache_interval)
        if compile_cache:
            from .fast.compiling import set_cache_dir

            set_cache_dir(compile_cache)
        tiny = base == models.TINY
        adapter = adapter or (models.TINY if tiny else models.DEFAULT_ADAPTER)
        image_encoder = image_encoder or (models.TINY if tiny else models.DEFAULT_IMAGE_ENCODER)

        # 2. The parts that are cheap to check go first, so a bad adapter fails before SDXL loads.
        tiny_models = None
        if models.TINY in (base, adapter, image_encoder):
            from .testing.tiny import build_tiny

            tiny_models = build_tiny()
        if adapter == models.TINY:
            state_dict, adapter_id = tiny_models.adapter_state_dict, "tiny"
        else:
            path = models.resolve_file(adapter, "IP-Adapter")
            state_dict, adapter_id = adapter_mod.load_state_dict(path), adapter
        info = adapter_mod.inspect(state_dict)
        if image_encoder == models.TINY:
            encoder, extractor, encoder_id = tiny_models.image_encoder, tiny_models.feature_extractor, "tiny"
        else:
            encoder, extractor = models.load_image_encoder(image_encoder, dt)
            encoder_id = image_encoder
        if info.clip_dim != encoder.config.projection_dim:  # before the multi-GB base model loads
            adapter_mod.check_compatible(info, encoder, None, 0)

        # 3. Base model.
        if base == models.TINY:
            pipe = tiny_models.pipe
        else:
            pipe = models.load_base_pipeline(base, dt, variant, base_config=base_config)
        if vae:
            pipe.register_modules(vae=models.load_vae(vae, dt, pipe.unet, pipe.vae))
        n_cross = sum(len(m.processors) for m in blocks.discover(pipe.unet))
        adapter_mod.check_compatible(info, encoder, pipe.unet, n_cross)

        # 4. Attach the adapter (scales rest at 0; each call sets its own inside a scope).
        adapter_mod.attach(pipe, [state_dict], encoder, extractor)
        _to(pipe, dev if memory == "normal" else torch.device("cpu"), dt)
        fastpath.apply_memory_mode(pipe, memory, dev)  # fails early (one line) for offload without CUDA
        content_text = None
        if content_text_encoder:
            model, tok = models.load_text_encoder_with_projection(content_text_encoder, dt)
            content_text = (model.to(dev), tok)
        pipe.set_progress_bar_config(disable=not progress)

        if cache_dir is True:
            cache_dir = embeddings.cache_dir()
        cache = embeddings.EmbeddingCache(cache_dir or None)
        ids = {"base": models.canonical_id(base), "adapter": models.canonical_id(adapter_id),
               "image_encoder": models.canonical_id(encoder_id)}
        if vae:
            ids["vae"] = models.canonical_id(vae)
        model = cls(pipe, encoder, extractor, info, ids=ids, content_text=content_text, cache=cache, speed=speed)
        model.memory, model._memory_device = memory, dev
        return model

    def set_memory(self, mode: str) -> None:
        """Switch the memory layout (``normal`` | ``balanced`` | ``low`` | ``lowest``) after loading.

        ``low`` (accelerate hooks) can be left for any mode. Group offloading (``balanced``,
        ``lowest``) cannot be undone in diffusers, so from those only ``balanced`` -> ``lowest``
        is possible; anything else is a one-line error (load the model again).
        """
        if mode == self.memory:
            return
        if self.memory in ("balanced", "lowest") and not (self.memory == "balanced" and mode == "lowest"):
            raise InstantStyleError(f"cannot switch from --memory {self.memory} to {mode} in one process "
                                    "(diffusers cannot undo group offloading); load the model again")
        if self.memory == "low":
            for pipe in self._pipelines():
                pipe.remove_all_hooks()
            fastpath.vae_tiles(self.pipe.vae, small=False)
            for pipe in self._pipelines():
                pipe.to(self._memory_device)
        fastpath.apply_memory_mode(self.pipe, mode, self._memory_device)
        self.memory, self._laid_out = mode, self.pipe

    def _pipelines(self) -> list:
        """Our pipeline and those derived from it with ``from_pipe`` (sharing its modules)."""
        from .pipelines.stylize import derived_pipelines

        return [self.pipe, *derived_pipelines(self)]

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device  # the GPU also under CPU offload

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def native_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    # ------------------------------------------------------------------ styles

    def encode_style(self, images: Sequence[StyleRef], weights: Sequence[float] | None = None) -> embeddings.Style:
        """Embed one or several references (paths, PIL images, @saved styles) into a ``Style``."""
        return self.styles.encode(images, weights)

    @torch.no_grad()
    def content_embedding(self, content_prompt: str) -> torch.Tensor:
        """Pooled, projected text embedding ``[1, D]`` of ``content_prompt`` in the image encoder's space.

        By default SDXL's own ``text_encoder_2`` (bigG, 1280-d, the same joint space as the bigG
        image encoder); ``content_text_encoder`` overrides it for other adapter/encoder pairs.
        """
        if self.content_text is not None:
            model, tok = self.content_text
            ids = tok([content_prompt], padding="max_length", truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt").input_ids.to(self.device)
            return model(ids).text_embeds.float().cpu()
        pooled = self.pipe.encode_prompt(
            content_prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )[2]
        return pooled.float().cpu()

    # ------------------------------------------------------------------ generation

    def request(self, request: GenerateRequest | None = None, **params) -> GenerateRequest:
        if request is None:
            return make_request(flag_style=False, **params)
        if params:
            return make_request(flag_style=False, **{**request.model_dump(), **params})
        return request

    def resolve_scales(self, req: GenerateRequest) -> dict[str, float]:
        """The conditional-branch scales of ``req`` (``resolve_branches`` has every branch)."""
        return self.resolve_branches(req)["cond"]

    def resolve_branches(self, req: GenerateRequest) -> dict[str, dict[str, float]]:
        spec = blocks.parse_spec(req.blocks) if req.blocks else blocks.preset_spec(req.mode)
        branches = blocks.resolve_branches(self.modules, spec, req.scale, req.layout_boost)
        if len(branches) > 1 and req.guidance <= 1.0:
            raise InstantStyleError("a preset with an unconditional-branch block needs classifier-free guidance; "
                                    "use --guidance > 1")
        if req.composition:
            comp = self.composition_scales(req)
            shared = [p for p, s in comp.items() if s and branches["cond"][p]]
            if shared:
                raise InstantStyleError(
                    f"--composition takes {shared[0].split('.transformer_blocks')[0]}, which the style also gets; "
                    "give the style other blocks (--mode style, strong or precise)")
        return branches

    def composition_scales(self, req: GenerateRequest) -> dict[str, float]:
        """The composition image's scales: the layout block(s), at --composition-scale."""
        return blocks.resolve(self.modules, blocks.preset_spec("composition"), req.effective_composition_scale)

    def prepare(self, req: GenerateRequest, style_images: Sequence[StyleRef] | None = None, *,
                composition_image: Image.Image | None = None,
                negative_style_image: Image.Image | None = None) -> Prepared:
        """Steps 1-4 of a generation: everything but the denoising loop.

        ``composition_image``/``negative_style_image`` are in-memory images used instead of the
        files ``req.composition``/``req.negative_style`` name (those then only label them).
        """
        # 1. Blocks: a misspelt name fails here, before any model runs.
        branches = self.resolve_branches(req)
        scales = branches["cond"]
        # 2. Size and seed.
        width, height = req.width or self.native_size, req.height or self.native_size
        unit = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        if width % unit or height % unit:
            raise InstantStyleError(f"--width/--height {width}x{height}: must be multiples of {unit} for this model")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        prompts.warn_if_truncated(self.pipe.tokenizer, {"prompt": req.prompt, "negative prompt": req.negative_prompt,
                                                        "content prompt": req.content_prompt})
        # 3. Style embedding in CLIP space: encode (cached), combine, subtract content.
        refs = list(style_images or []) + list(req.style)
        style = self.encode_style(refs, req.style_weights)
        cond = embeddings.combine_styles(style.embeds, style.weights, req.style_combine)  # [M, D]
        if req.content_prompt:
            cond = embeddings.subtract_content(cond, self.content_embedding(req.content_prompt),
                                               req.effective_content_scale)
        # 4. Precomputed embeds for diffusers: unconditional = zeros or the negative image, batch 1
        #    (diffusers repeats it); one slot per branch / extra image (see injection.py).
        do_cfg = req.guidance > 1.0
        uncond, extra_hashes = None, {}
        if req.negative_style:
            negative = self.encode_style([negative_style_image if negative_style_image is not None
                                          else req.negative_style])
            uncond = embeddings.negative_embedding(negative.embeds, req.effective_negative_style_scale)
            extra_hashes["negative_style_sha256"] = negative.image_hashes
        slots = [("style", embeddings.with_unconditional(cond, do_cfg, uncond), scales)]
        for branch in ("uncond", "both"):
            if branch in branches:  # the reference in the unconditional half (and the conditional, for both)
                slots.append((branch, embeddings.with_unconditional(cond, True, cond), branches[branch]))
        if req.composition:
            comp = self.encode_style([composition_image if composition_image is not None else req.composition])
            comp_cond = embeddings.combine_styles(comp.embeds, comp.weights, "mean")
            slots.append(("composition", embeddings.with_unconditional(comp_cond, do_cfg, uncond),
                          self.composition_scales(req)))
            extra_hashes["composition_sha256"] = comp.image_hashes
        ip_embeds = [e.to(self.device, self.dtype) for _, e, _ in slots]
        params = {
            **req.model_dump(),
            "seed": seed,
            "width": width,
            "height": height,
            "content_scale": req.effective_content_scale if req.content_prompt else None,
            "active_blocks": blocks.active_modules(self.modules, scales),
            **{f"active_blocks_{kind}": blocks.active_modules(self.modules, s) for kind, _, s in slots[1:]},
            "style_image_sha256": style.image_hashes,
            **extra_hashes,
            **self.ids,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "speed": self.speed.as_dict(),  # fp8 changes the picture
            "memory": self.memory,  # low/lowest tile the VAE decode
            "versions": _versions(),
        }
        params["style"] = [str(s) for s in req.style] + [f"<image {h[:12]}>" for h in
                                                         style.image_hashes[: len(style_images or [])]]
        for name, value in (("composition", req.composition), ("negative_style", req.negative_style)):
            if value and name + "_sha256" in extra_hashes and (composition_image if name == "composition"
                                                               else negative_style_image) is not None:
                params[name] = f"<image {extra_hashes[name + '_sha256'][0][:12]}>"
        return Prepared(req, seed, width, height, ip_embeds, [s for _, _, s in slots], style.image_hashes, params,
                        slots=[k for k, _, _ in slots])

    def generate(
        self,
        request: GenerateRequest | None = None,
        *,
        style_images: Sequence[StyleRef] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        content_image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        style_mask_images: Sequence[Image.Image] | None = None,
        control_images: Sequence[Image.Image | None] | None = None,
        composition_image: Image.Image | None = None,
        negative_style_image: Image.Image | None = None,
        **params,
    ) -> list[Image.Image]:
        """Generate images; each carries its full parameters in ``image.info`` (see ``images.save_png``).

        ``generate(prompt="a cat", style=["ref.png"], mode="style", content_prompt="a dog", seed=42)``
        or ``generate(request)``; ``style_images`` adds in-memory PIL images / ``Style`` objects.
        ``content_image``/``mask_image``/``style_mask_images``/``control_images`` are in-memory images
        used instead of the files the request's ``content``/``mask``/``style_masks``/``control_image``
        name (those fields then only label them, e.g. ``content="<upload>"``; nothing is read from disk).
        """
        req = self.request(request, **params)
        in_memory = {"content": content_image, "mask": mask_image, "style_masks": style_mask_images,
                     "control_image": control_images, "composition": composition_image,
                     "negative_style": negative_style_image}
        extra = {"composition_image": composition_image, "negative_style_image": negative_style_image}
        for name, value in in_memory.items():
            given = value is not None and (not isinstance(value, list | tuple) or len(value) > 0)
            if given and not getattr(req, name):
                raise InstantStyleError(f"an in-memory {name} image was given but the request's {name} is empty; "
                                        f"set {name} to a label such as '<upload>' so the request says it is used")
        if req.method != "instantstyle":
            from .methods import run_method

            return run_method(self, req, style_images=style_images, on_step=on_step,
                              **{k: v for k, v in extra.items() if v is not None})
        from .pipelines.stylize import needs_stylize

        if needs_stylize(req):  # content image, ControlNet, img2img, inpainting, regional styles, Plus
            from .pipelines.stylize import stylize

            return stylize(self, req, style_images=style_images, on_step=on_step, content_image=content_image,
                           mask_image=mask_image, style_masks=style_mask_images, control_images=control_images,
                           **extra)
        prep = self.prepare(req, style_images, **extra)
        return self.run(self.pipe, prep, on_step=on_step)

    def warmup(self, width: int | None = None, height: int | None = None) -> float:
        """One 2-step generation at the native size (guidance on, batch 1: the usual request), so
        compilation and CUDA-graph capture happen now rather than in the first request. Seconds."""
        import time

        start = time.perf_counter()
        grey = Image.new("RGB", (224, 224), (128, 128, 128))
        # DeepCache: the second call traces the full step again, now with its feature buffers made.
        # CFG truncation: enough steps that the last one runs without CFG (its batch-1 graph).
        steps = 2 if self.speed.cfg_truncation <= 0 else max(2, math.ceil(1 / self.speed.cfg_truncation) + 1)
        for _ in range(2 if self.speed.deepcache_interval > 1 and self.speed.compile else 1):
            self.generate(prompt="warm-up", style_images=[grey], steps=steps, seed=0, width=width, height=height)
        return time.perf_counter() - start

    def run(self, pipe, prep: Prepared, *, on_step=None, scale_maps: list[dict] | None = None, **pipe_kwargs):
        """The denoising loop: ``pipe`` (any SDXL pipeline sharing our components) with scoped scales."""
        req = prep.request
        if self.memory != "normal" and pipe is not self._laid_out:
            # A pipeline built with from_pipe shares our modules; offload hooks are per pipeline,
            # so lay out the one about to run (its own order includes e.g. its ControlNet).
            fastpath.apply_memory_mode(pipe, self.memory, self._memory_device)
            self._laid_out = pipe
        kwargs = dict(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            ip_adapter_image_embeds=prep.ip_embeds,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            width=prep.width,
            height=prep.height,
            num_images_per_prompt=req.num_images,
            generator=prep.generator(),
        )
        callbacks, tensor_inputs = [], []
        if on_step is not None:
            def _callback(_pipe, i, _t, cb_kwargs):
                on_step(i + 1, req.steps)
                return cb_kwargs

            callbacks.append(_callback)
        callbacks.append(pipe_kwargs.pop("callback_on_step_end", None))
        tensor_inputs += pipe_kwargs.pop("callback_on_step_end_tensor_inputs", None) or []
        kwargs.update(pipe_kwargs)
        speed = self.speed
        if speed.cfg_truncation > 0 and req.guidance > 1.0:
            if "uncond" in prep.slots:
                raise InstantStyleError("--mode precise works through the unconditional branch, which --cfg-truncation "
                                        "drops; use one or the other")
            # 4a. CFG truncation (approximation): after the switch step, the conditional half only.
            if type(pipe).__name__ != "StableDiffusionXLPipeline":
                raise InstantStyleError(f"--cfg-truncation works for text-to-image only, not {type(pipe).__name__}; "
                                        "drop it (or use --speed max-tuned) for this request")
            callbacks.append(fast_cfg.callback(req.steps, speed.cfg_truncation))
            tensor_inputs += list(fast_cfg.TENSOR_INPUTS)
        window = injection.StepWindow(req.style_window)  # the style only inside --style-window
        if not window.is_full:
            callbacks.insert(0, window)
        if any(callbacks):
            kwargs["callback_on_step_end"] = fast_cfg.chain(*callbacks)
            kwargs["callback_on_step_end_tensor_inputs"] = list(dict.fromkeys(["latents", *tensor_inputs]))
        output_type = kwargs.get("output_type", "pil")
        n_loaded = len(next(iter(adapter_mod.ip_processors(pipe.unet).values())).scale)
        with injection.shared_slots(pipe.unet, prep.slots[n_loaded:]), \
                adapter_mod.scoped_scales(pipe.unet, scale_maps or prep.scales), \
                scoped_scheduler(pipe, req.scheduler):
            with torch.inference_mode(), fastpath.scope(pipe, speed, kwargs.get("cross_attention_kwargs")) as used, \
                    window.active_in(pipe.unet):
                # 4b. The VAE decode by the fast path (bf16 twin, channels-last, compiled) when it applies.
                decoder = fastpath.fast_decoder(pipe, used) if output_type in ("pil", "np", "pt") else None
                if decoder is not None:
                    kwargs["output_type"] = "latent"
                images = pipe(**kwargs).images
                if decoder is not None:
                    images = fastpath.decode_latents(pipe, images, decoder, used, output_type)
        if output_type == "pil":
            approx = speed.approximations()
            for i, image in enumerate(images):
                attach_metadata(image, {**prep.params, **({"approximations": approx} if approx else {}), "index": i,
                                        "image_seed": prep.seed + i})
        return images


# ---------------------------------------------------------------------- helpers

_SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}


@contextlib.contextmanager
def swap_scheduler(pipe, scheduler):
    """Run the block with ``scheduler`` on ``pipe``, then put the original back (even on error)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield scheduler
    finally:
        pipe.scheduler = original


@contextlib.contextmanager
def scoped_scheduler(pipe, name: str):
    """The named sampler for one call (no state leaks between requests); SDXL's own is reused as is."""
    import diffusers

    cls_name, extra = _SCHEDULERS[name]
    if type(pipe.scheduler).__name__ == cls_name and not extra:
        yield pipe.scheduler
        return
    with swap_scheduler(pipe, getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)) as s:
        yield s


def _to(pipe, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``pipe`` and its IP-Adapter parts; cast only if needed (diffusers warns on a no-op cast)."""
    if pipe.unet.dtype != dtype:
        pipe.to(device, dtype)
    else:
        pipe.to(device)


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {"instantstyle": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
