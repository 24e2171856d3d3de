"""Memory modes: where a loaded pipeline's weights live (a load-time choice, not per call).

``normal``: everything on the device; ``balanced``: the text and image encoders stream from the
CPU when they run (the UNet, ControlNets and VAE stay, so the fast path keeps every piece);
``low``: model CPU offload + VAE tiling/slicing; ``lowest``: group offloading of everything but
the VAE + VAE tiling. ``auto_memory`` picks one from the card's size. Changing the mode first
drops what the fast path cached for the old layout (``fast.call.release_caches``).
"""

from __future__ import annotations

import weakref

import torch

from .errors import InstantStyleError

MEMORY_MODES = ("normal", "balanced", "low", "lowest")
MEMORY_CHOICES = ("auto", *MEMORY_MODES)  # "auto": chosen from the card's size (auto_memory)
ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")  # what "balanced" streams from the CPU


def auto_memory(device: torch.device | str) -> str:
    """The memory mode for ``--memory auto``: from the card's total memory, by the peaks measured
    on full-size SDXL at 1024 px (README, 'Memory modes'): normal needs ~18 GiB with a ControlNet,
    balanced ~13.2, low ~7.2 (Plus ~11.6), lowest ~1.6 (Plus ~3.5)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "normal"
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if total >= 22:
        return "normal"
    if total >= 14.5:
        return "balanced"
    if total >= 10:
        return "low"
    return "lowest"


_GROUP_OFFLOADED: weakref.WeakSet = weakref.WeakSet()  # modules under diffusers' group offloading


def _group_offload(pipe, device: torch.device, exclude: tuple[str, ...]) -> None:
    """diffusers' group offloading (leaf level, next layer prefetched on a CUDA stream) for every
    component not in ``exclude``. Idempotent per module: pipelines made with ``from_pipe`` share
    modules, and a module must not get the hooks twice."""
    from diffusers.hooks import apply_group_offloading

    for name, module in pipe.components.items():
        if name in exclude or not isinstance(module, torch.nn.Module) or module in _GROUP_OFFLOADED:
            continue
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
        _GROUP_OFFLOADED.add(module)


def apply_memory_mode(pipe, mode: str, device: torch.device | str) -> None:
    """Load-time memory layout.

    - ``normal``: everything on ``device``.
    - ``balanced``: the text encoders and the image encoder (5 GB of SDXL's 12 in fp16) live on
      the CPU and stream in layer by layer when they run (group offloading with prefetch); the
      UNet, ControlNets and VAE stay on the GPU, so the fast path keeps every piece. Costs the
      prompt encoding's transfer (~1.6 GB per call) and, on an embedding-cache miss, the image
      encoder's (~3.7 GB).
    - ``low``: model CPU offload (one model on the GPU at a time) + VAE tiling and slicing.
    - ``lowest``: group offloading of every model but the VAE (weights stream in layer by layer,
      the next layer's copy overlapping the current layer's compute) + VAE tiling; sequential
      offload where group offloading is unavailable.
    """
    device = torch.device(device)
    if mode not in MEMORY_MODES:
        raise InstantStyleError(f"--memory {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    from .fast import vae as fast_vae
    from .fast.call import release_caches

    release_caches(pipe.unet)  # weights are about to move: cached copies and captured addresses go stale
    if getattr(pipe, "vae", None) is not None:
        fast_vae.release(pipe.vae)
    if mode == "normal":
        pipe.to(device)
        return
    if device.type != "cuda":
        raise InstantStyleError(
            f"--memory {mode} offloads to the CPU between uses of a GPU; it needs --device cuda"
        )
    if mode == "balanced":
        resident = tuple(
            name
            for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) and name not in ENCODERS
        )
        for name in resident:
            getattr(pipe, name).to(device)
        _group_offload(pipe, device, exclude=resident)
        return
    if mode == "low":
        pipe.enable_model_cpu_offload(device=device)
    else:
        try:
            import diffusers.hooks  # noqa: F401
        except ImportError:  # pragma: no cover - older diffusers
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            # The VAE stays on the GPU (0.2 GB, decoded in tiles): SDXL's pipelines upcast it to
            # float32 with .to() around decoding, which group offloading's CPU copies do not follow
            # (seen on an H200: "Input type (float) and bias type (c10::Half)").
            pipe.vae.to(device)
            _group_offload(pipe, device, exclude=("vae",))
    vae_tiles(pipe.vae, small=True)


# SDXL's VAE tiles at its sample_size (1024 px), so "tiling" never splits a 1024 px decode, whose
# float32 activations peak at ~3 GiB. The low-memory modes decode in 512 px tiles (25% overlap,
# blended: a small, documented difference in the picture, as with any tiled decode).
SMALL_VAE_TILE = 512
_VAE_TILE_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vae_tiles(vae, small: bool) -> None:
    """``small``: tiled + sliced decoding in ``SMALL_VAE_TILE`` px tiles; else the VAE's defaults
    (no tiling, no slicing)."""
    if not hasattr(vae, "tile_sample_min_size"):
        if small:
            vae.enable_tiling()
        return
    defaults = _VAE_TILE_DEFAULTS.setdefault(vae, (vae.tile_sample_min_size, vae.tile_latent_min_size))
    if small:
        factor = defaults[0] // defaults[1]  # pixels per latent (8)
        size = min(SMALL_VAE_TILE, defaults[0])
        vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // factor
        vae.enable_tiling()
        vae.enable_slicing()
    else:
        vae.tile_sample_min_size, vae.tile_latent_min_size = defaults
        vae.disable_tiling()
        vae.disable_slicing()
