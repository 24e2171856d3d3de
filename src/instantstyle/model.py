"""``InstantStyle``: the loaded model. Load SDXL or SD1.5 + an IP-Adapter once, then route each request.

The object holds what loading produced (the base pipeline with the adapter attached, the image
encoder, the style encoder and its cache, the fast-path options and the memory layout) and the
pipelines derived from it (``derived_pipeline``: ``from_pipe``, every component shared). A
request goes to its method (``methods.METHODS``); InstantStyle's own method routes it to its task
(``pipelines.TASKS``), whose module drives one of diffusers' stock pipelines of the base's family
(``family``: ``blocks.family``, read from the UNet's structure; ``pipelines.PIPELINES``) through
``prepare`` (blocks, size, seed, style embeddings) and ``run`` (the scoped denoising loop).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from . import adapter as adapter_mod
from . import blocks, embeddings, files, loras, methods, models, pipelines, provenance, sizes
from . import fast as fast_path
from . import memory as memory_modes
from .config import GenerateRequest, make_request
from .errors import InstantStyleError
from .images import DEFAULT_MAX_PIXELS
from .pipelines import denoise
from .pipelines.prepare import Prepared, prepare

StyleRef = str | Path | Image.Image | embeddings.Style
IN_MEMORY = ("content", "mask", "style_masks", "control_image", "composition", "negative_style")


class InstantStyle:
    """Style-preserving text-to-image on SDXL or SD1.5 (InstantStyle, arXiv 2404.02733)."""

    def __init__(
        self,
        pipe,
        image_encoder,
        feature_extractor,
        adapter_info: adapter_mod.AdapterInfo,
        *,
        ids: dict[str, str],
        content_text=None,
        content_text_default: str | None = None,
        cache: embeddings.EmbeddingCache | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        speed: str | fast_path.FastOptions | None = "auto",
    ):
        self.pipe = pipe
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.adapter_info = adapter_info
        self.ids = ids  # base / adapter / image_encoder identifiers, recorded in outputs
        self.content_text = content_text  # optional (CLIPTextModelWithProjection, tokenizer)
        # The text tower loaded when content subtraction is first asked for and none was given
        # (SD1.5: the ViT-H tower; SDXL: None, its own text_encoder_2 is in the bigG space).
        self.content_text_default = content_text_default
        self.family = blocks.family(pipe.unet)  # "sdxl" | "sd15", from the UNet's structure
        self.styles = embeddings.StyleEncoder(
            image_encoder,
            feature_extractor,
            ids["image_encoder"],
            cache,
            max_pixels,
            features=adapter_info.features,
        )
        self.modules = blocks.discover(pipe.unet)
        self.speed = fast_path.options_for(speed, self.device)  # fast-path pieces used by run()
        self.memory = "normal"  # load-time memory layout (memory.MEMORY_MODES); see set_memory
        self._memory_device = self.device
        self._laid_out = pipe  # the pipeline whose offload hooks are current
        self._derived: dict[tuple, object] = {}  # (class name, ControlNet ids) -> pipeline from from_pipe
        self.loras = loras.Loras(pipe)  # user LoRAs: loaded once, active per call (generate)

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

        ``base``/``adapter``/``image_encoder``: a local path, a Hub reference or ``tiny``
        (``instantstyle.models``; ``base="tiny"`` implies the tiny adapter and encoder); ``base``
        may be one ``.safetensors`` checkpoint (an SDXL finetune), read with ``from_single_file``
        and the configs of ``base_config`` (default: the family's reference repository). ``vae``
        replaces the base's VAE (diffusers directory, Hub id or single file). ``cache_dir=True``
        caches image embeddings on disk in the default place, a path puts them there,
        ``False``/``None`` keeps them in memory. ``speed``: the fast path (``fast.options_for``:
        auto, plain, exact, graphs, fast, max, fp8; ``long_lived=True`` makes ``auto`` pick ``max``
        on CUDA, for servers), plus the ``cfg_truncation``/``deepcache_interval`` approximations;
        ``memory`` = auto | normal | balanced | low | lowest (``memory.apply_memory_mode``;
        ``auto`` picks by the card's size); ``compile_cache`` keeps torch.compile's artefacts there.
        """
        # 1. Device and dtype: CUDA fp16, MPS fp16, else CPU fp32; the fast path's options.
        dev, dt = models.device_and_dtype(device, dtype)
        if memory == "auto":
            memory = memory_modes.auto_memory(dev)
        fast = fast_path.options_for(
            speed,
            dev,
            long_lived=long_lived,
            cfg_truncation=cfg_truncation,
            deepcache_interval=deepcache_interval,
        )
        if compile_cache:
            from .fast.compiling import set_cache_dir

            set_cache_dir(compile_cache)
        adapter = adapter or models.default_adapter(base)
        image_encoder = image_encoder or models.default_image_encoder(base, adapter)

        # 2. The parts that are cheap to check go first, so a bad adapter fails before the base loads
        #    (an adapter of another family, from the base's UNet config alone, then the encoder).
        state_dict = models.load_adapter_state_dict(adapter)
        info = adapter_mod.inspect(state_dict)
        _check_adapter_family(info, adapter, base, _unet_config_or_none(base))
        encoder, extractor = models.load_image_encoder(image_encoder, dt)
        adapter_mod.check_encoder(info, encoder)  # before the multi-GB base model loads

        # 3. Base model (SDXL or SD1.5: models.load_base_pipeline picks the pipeline class).
        pipe = models.load_base_pipeline(base, dt, variant, base_config=base_config)
        if vae:
            pipe.register_modules(vae=models.load_vae(vae, dt, pipe.unet, pipe.vae))
        modules = blocks.discover(pipe.unet)
        n_cross = sum(len(m.processors) for m in modules)
        _check_adapter_family(info, adapter, base, dict(pipe.unet.config), n_cross, blocks.family(pipe.unet))
        adapter_mod.check_compatible(info, encoder, pipe.unet, n_cross)

        # 4. Attach the adapter (scales rest at 0; each call sets its own inside a scope), lay out memory.
        adapter_mod.attach(pipe, [state_dict], encoder, extractor)
        _to(pipe, dev if memory == "normal" else torch.device("cpu"), dt)
        memory_modes.apply_memory_mode(pipe, memory, dev)  # fails early (one line) for offload without CUDA
        content_text = None
        if content_text_encoder:
            text_model, tok = models.load_text_encoder_with_projection(content_text_encoder, dt)
            _check_content_space(text_model, encoder, content_text_encoder)
            content_text = (text_model.to(dev), tok)
        pipe.set_progress_bar_config(disable=not progress)

        # 5. The style cache and the ids every output records.
        cache = embeddings.EmbeddingCache((files.cache_dir() if cache_dir is True else cache_dir) or None)
        ids = {
            "base": base,
            "adapter": adapter,
            "image_encoder": image_encoder,
            **({"vae": vae} if vae else {}),
        }
        ids = {key: models.canonical_id(spec) for key, spec in ids.items()}
        model = cls(
            pipe,
            encoder,
            extractor,
            info,
            ids=ids,
            content_text=content_text,
            content_text_default=models.family_default(
                base, "content_text_encoder", blocks.family(pipe.unet)
            ),
            cache=cache,
            speed=fast,
        )
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
            raise InstantStyleError(
                f"cannot switch from --memory {self.memory} to {mode} in one process "
                "(diffusers cannot undo group offloading); load the model again"
            )
        if self.memory == "low":
            for pipe in self.pipelines():
                pipe.remove_all_hooks()
            memory_modes.vae_tiles(self.pipe.vae, small=False)
            for pipe in self.pipelines():
                pipe.to(self._memory_device)
        memory_modes.apply_memory_mode(self.pipe, mode, self._memory_device)
        self.memory, self._laid_out = mode, self.pipe

    def lay_out(self, pipe) -> None:
        """Make ``pipe``'s offload hooks current before it runs (memory modes other than ``normal``).

        A pipeline built with ``from_pipe`` shares our modules, but offload hooks are per pipeline,
        so the one about to run is laid out (its own order includes e.g. its ControlNet).
        """
        if self.memory != "normal" and pipe is not self._laid_out:
            memory_modes.apply_memory_mode(pipe, self.memory, self._memory_device)
            self._laid_out = pipe

    # ------------------------------------------------------------------ derived pipelines

    def derived_pipeline(self, cls_name: str, controlnets: Sequence = ()):
        """``diffusers.<cls_name>.from_pipe(self.pipe, controlnet=...)``, built once per model."""
        import warnings

        import diffusers
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        key = (cls_name, tuple(id(c) for c in controlnets))
        if key not in self._derived:
            kwargs = {}
            if controlnets:
                kwargs["controlnet"] = (
                    controlnets[0] if len(controlnets) == 1 else MultiControlNetModel(list(controlnets))
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # dtype is not optional: diffusers 0.42's from_pipe casts the new pipeline -- whose
                # modules are OUR shared modules -- to float32 unless told otherwise (seen on an H200:
                # 31 GiB peak and 4x slower steps for every later request).
                pipe = getattr(diffusers, cls_name).from_pipe(self.pipe, dtype=self.dtype, **kwargs)
            pipe.set_progress_bar_config(**getattr(self.pipe, "_progress_bar_config", {}))
            self._derived[key] = pipe
        return self._derived[key]

    def pipelines(self) -> list:
        """Our pipeline and those derived from it with ``from_pipe`` (sharing its modules)."""
        return [self.pipe, *self._derived.values()]

    # ------------------------------------------------------------------ what the model is

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device  # the GPU also under CPU offload

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def native_size(self) -> int:
        """The base's native image size (SDXL 1024, SD1.5 512; 64 for the tiny models)."""
        sample = getattr(self.pipe, "default_sample_size", None) or self.pipe.unet.config.sample_size
        return sample * self.pipe.vae_scale_factor

    @property
    def size_unit(self) -> int:
        """Generated sizes are multiples of this (``sizes.size_unit``: 32 for SDXL)."""
        return sizes.size_unit(self.pipe)

    def provenance(self) -> dict:
        """The model's part of every output's parameters: ids, device, dtype, speed, memory."""
        return {
            **self.ids,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "speed": self.speed.as_dict(),  # fp8 changes the picture
            "memory": self.memory,  # low/lowest tile the VAE decode
            **({"lora_files": self.loras.records()} if self.loras.active else {}),  # the call's user LoRAs
        }

    def output_params(self, req: GenerateRequest, *, seed: int, width: int, height: int, **extra) -> dict:
        """Every output's parameters (``provenance.output_params``) for ``req`` on this model."""
        return provenance.output_params(
            req.model_dump(), seed=seed, width=width, height=height, model=self.provenance(), **extra
        )

    # ------------------------------------------------------------------ styles

    def encode_style(
        self, images: Sequence[StyleRef], weights: Sequence[float] | None = None
    ) -> embeddings.Style:
        """Embed one or several references (paths, PIL images, @saved styles) into a ``Style``."""
        return self.styles.encode(images, weights)

    @torch.no_grad()
    def content_embedding(self, content_prompt: str) -> torch.Tensor:
        """Pooled, projected text embedding ``[1, D]`` of ``content_prompt`` in the image encoder's space.

        By default SDXL's own ``text_encoder_2`` (bigG, 1280-d, the same joint space as the bigG
        image encoder); ``content_text_encoder`` overrides it for other adapter/encoder pairs. SD1.5's
        text encoder has no projection into the image encoder's space: there the family's tower
        (``content_text_default``, the ViT-H one) is loaded on first use, as InstantStyle's
        infer_style_sd15.py does.
        """
        if self.content_text is None and self.family != "sdxl":
            self.content_text = self._load_content_text()
        if self.content_text is not None:
            text_model, tok = self.content_text
            ids = tok(
                [content_prompt],
                padding="max_length",
                truncation=True,
                max_length=tok.model_max_length,
                return_tensors="pt",
            ).input_ids.to(self.device)
            return text_model(ids).text_embeds.float().cpu()
        pooled = self.pipe.encode_prompt(
            content_prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )[2]
        return pooled.float().cpu()

    def _load_content_text(self):
        """The default projected text tower of a base without one (SD1.5), checked against the encoder."""
        spec = self.content_text_default
        if spec is None:
            raise InstantStyleError(
                f"--content-prompt on an {blocks.FAMILY_LABELS[self.family]} base needs a text tower in the image "
                "encoder's CLIP space; pass --content-text-encoder (e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
                "for ViT-H adapters)"
            )
        text_model, tok = models.load_text_encoder_with_projection(spec, self.dtype)
        _check_content_space(text_model, self.image_encoder, spec)
        self.ids["content_text_encoder"] = models.canonical_id(spec)
        return text_model.to(self.device), tok

    # ------------------------------------------------------------------ requests and blocks

    def request(self, request: GenerateRequest | None = None, **params) -> GenerateRequest:
        if request is None:
            return make_request(flag_style=False, **params)
        if params:
            return make_request(flag_style=False, **{**request.model_dump(exclude_unset=True), **params})
        return request

    def resolve_scales(self, req: GenerateRequest) -> dict[str, float]:
        """The conditional-branch scales of ``req`` (``resolve_branches`` has every branch)."""
        return self.resolve_branches(req)["cond"]

    def resolve_branches(self, req: GenerateRequest) -> dict[str, dict[str, float]]:
        if (
            req.content_prompt and self.adapter_info.patch_features
        ):  # no CLIP-space embedding to subtract from
            raise InstantStyleError(embeddings.PATCH_SUBTRACTION)
        spec = blocks.parse_spec(req.blocks) if req.blocks else blocks.preset_spec(req.mode)
        branches = blocks.resolve_branches(self.modules, spec, req.scale, req.layout_boost)
        if len(branches) > 1 and req.guidance <= 1.0:
            raise InstantStyleError(
                "a preset with an unconditional-branch block needs classifier-free guidance; "
                "use --guidance > 1"
            )
        if req.composition:
            comp = self.composition_scales(req)
            shared = [p for p, s in comp.items() if s and branches["cond"][p]]
            if shared:
                raise InstantStyleError(
                    f"--composition takes {shared[0].split('.transformer_blocks')[0]}, which the style also gets; "
                    "give the style other blocks (--mode style, strong or precise)"
                )
        return branches

    def composition_scales(self, req: GenerateRequest) -> dict[str, float]:
        """The composition image's scales: the layout block(s), at --composition-scale."""
        return blocks.resolve(
            self.modules, blocks.preset_spec("composition"), req.effective_composition_scale
        )

    # ------------------------------------------------------------------ generation

    def prepare(
        self,
        req: GenerateRequest,
        style_images: Sequence[StyleRef] | None = None,
        *,
        composition_image: Image.Image | None = None,
        negative_style_image: Image.Image | None = None,
    ) -> Prepared:
        """Steps 1-4 of a generation, everything but the denoising loop (``pipelines.prepare``)."""
        return prepare(
            self,
            req,
            style_images,
            composition_image=composition_image,
            negative_style_image=negative_style_image,
        )

    def run(self, pipe, prep: Prepared, *, on_step=None, scale_maps: list[dict] | None = None, **pipe_kwargs):
        """The denoising loop: ``pipe`` (any SDXL pipeline sharing our components) with scoped scales
        (``pipelines.denoise``)."""
        return denoise.run(self, pipe, prep, on_step=on_step, scale_maps=scale_maps, **pipe_kwargs)

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
        given = (
            content_image,
            mask_image,
            style_mask_images,
            control_images,
            composition_image,
            negative_style_image,
        )
        for name, value in zip(IN_MEMORY, given, strict=True):
            present = value is not None and (not isinstance(value, list | tuple) or len(value) > 0)
            if present and not getattr(req, name):
                raise InstantStyleError(
                    f"an in-memory {name} image was given but the request's {name} is empty; "
                    f"set {name} to a label such as '<upload>' so the request says it is used"
                )
        images = {
            "content_image": content_image,
            "mask_image": mask_image,
            "style_mask_images": style_mask_images,
            "control_images": control_images,
            "composition_image": composition_image,
            "negative_style_image": negative_style_image,
        }
        with self.loras.scope(req.loras):  # every method and task; all LoRA layers off afterwards
            return methods.run_method(
                self,
                req,
                style_images=style_images,
                on_step=on_step,
                **{k: v for k, v in images.items() if v is not None},
            )

    def run_task(
        self,
        req: GenerateRequest,
        *,
        style_images: Sequence[StyleRef] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        **images,
    ) -> list[Image.Image]:
        """InstantStyle's own method: ``req`` through its task's module (``pipelines.TASKS``)."""
        return pipelines.run_task(self, req, style_images=style_images, on_step=on_step, **images)

    def warmup(self, width: int | None = None, height: int | None = None) -> float:
        """One 2-step generation at the native size (guidance on, batch 1: the usual request), so
        compilation and CUDA-graph capture happen now rather than in the first request. Seconds."""
        start = time.perf_counter()
        grey = Image.new("RGB", (224, 224), (128, 128, 128))
        # DeepCache: the second call traces the full step again, now with its feature buffers made.
        # CFG truncation: enough steps that the last one runs without CFG (its batch-1 graph).
        steps = 2 if self.speed.cfg_truncation <= 0 else max(2, math.ceil(1 / self.speed.cfg_truncation) + 1)
        for _ in range(2 if self.speed.deepcache_interval > 1 and self.speed.compile else 1):
            self.generate(
                prompt="warm-up", style_images=[grey], steps=steps, seed=0, width=width, height=height
            )
        return time.perf_counter() - start


def _unet_config_or_none(base: str) -> dict | None:
    """The base's UNet config if it is on disk already (KBs), for checks before the weights load."""
    try:
        return models.load_unet_config(base)
    except InstantStyleError:
        return None


# The h94 Plus file of each family, named when a Plus adapter of the other family is given.
PLUS_ADAPTERS = {
    "sdxl": "h94/IP-Adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
    "sd15": models.SD15_PLUS_ADAPTER,
}


def _check_adapter_family(
    info: adapter_mod.AdapterInfo,
    adapter: str,
    base: str,
    unet_config: dict | None,
    n_cross: int | None = None,
    family: str | None = None,
) -> None:
    """An IP-Adapter made for another family than the base (an SD1.5 adapter on SDXL, or the reverse)
    is a one-line error naming both and the base family's default adapter."""
    if unet_config is None:
        return
    family = family or models.base_family(base)
    cross = unet_config.get("cross_attention_dim")
    if info.cross_dim == cross and (n_cross is None or info.n_layers == n_cross):
        return
    label = blocks.FAMILY_LABELS[family]
    theirs = f"{info.n_layers} cross-attention layers of {info.cross_dim}-d tokens"
    ours = f"{n_cross} of {cross}-d" if n_cross is not None else f"{cross}-d cross-attention"
    raise InstantStyleError(
        f"--adapter '{adapter}' was made for another model family than the {label} base '{base}' "
        f"(it carries {theirs}; this UNet has {ours}); use an {label} adapter such as "
        f"{PLUS_ADAPTERS[family] if info.kind == 'plus' else models.FAMILY_DEFAULTS[family]['adapter']}"
    )


def _check_content_space(text_model, image_encoder, spec: str) -> None:
    """The content text tower must project into the image encoder's space (same width)."""
    text_dim, image_dim = text_model.config.projection_dim, image_encoder.config.projection_dim
    if text_dim != image_dim:
        raise InstantStyleError(
            f"--content-text-encoder '{spec}' projects to {text_dim}-d but the image encoder's embeddings are "
            f"{image_dim}-d: not the same CLIP space; use the text tower of the image encoder's CLIP model "
            "(ViT-H adapters: laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"
        )


def _to(pipe, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``pipe`` and its IP-Adapter parts; cast only if needed (diffusers warns on a no-op cast)."""
    if pipe.unet.dtype != dtype:
        pipe.to(device, dtype)
    else:
        pipe.to(device)
