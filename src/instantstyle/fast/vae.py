"""The VAE decode by the fast path: a persistent decoder twin in bf16, channels-last (exact).

Stock SDXL (diffusers 0.42 ``StableDiffusionXLPipeline``, end of ``__call__``) decodes with the
whole VAE cast to float32 at every call (``force_upcast``: SDXL's VAE overflows in fp16) and cast
back afterwards: ~10.5 TFLOP at 1024 px in float32/TF32, NCHW, plus two casts of the weights per
call (and a compiled decoder would see new weight tensors each time). bfloat16 keeps float32's
exponent range, so it does not overflow where fp16 does, and its rounding stays far below an
8-bit image's step (the exactness test asks >= 40 dB PSNR against the float32 decode).

``DecoderTwin`` is ``post_quant_conv`` + ``decoder`` copied once in the chosen dtype and memory
format (~100 MB in bf16 for SDXL), kept on the VAE and remade only when the VAE's weights change.
``decode`` then follows diffusers' tail step by step: unscale (or de-normalise with
``latents_mean``/``latents_std``), decode, watermark if the pipeline has one, post-process.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING

import torch

from . import compiling

if TYPE_CHECKING:
    from .options import FastOptions

_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # AutoencoderKL -> DecoderTwin
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def decode_dtype(vae, choice: str) -> torch.dtype:
    """``auto``: bf16 where stock would upcast to float32 (fp16 VAE with ``force_upcast``), else
    the VAE's own dtype; otherwise the named dtype."""
    if choice == "auto":
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        return torch.bfloat16 if upcast else vae.dtype
    return _DTYPES[choice]


def usable(pipe) -> bool:
    """Text-to-image SDXL pipelines whose VAE is resident and decodes in one piece (tiled or
    sliced decoding, offload hooks and other pipelines' own post-processing keep the stock tail)."""
    vae = getattr(pipe, "vae", None)
    if type(pipe).__name__ != "StableDiffusionXLPipeline" or vae is None or not hasattr(vae, "decoder"):
        return False
    if getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False):
        return False
    return not any(
        hasattr(m, "_hf_hook") or getattr(m, "_diffusers_hook", None) is not None for m in vae.modules()
    )


class DecoderTwin(torch.nn.Module):
    """``post_quant_conv`` + ``decoder`` of a VAE in ``dtype`` and ``memory_format``."""

    def __init__(self, vae, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        with torch.inference_mode(False), torch.no_grad():
            self.post_quant_conv = (
                copy.deepcopy(vae.post_quant_conv) if vae.post_quant_conv is not None else None
            )
            self.decoder = copy.deepcopy(vae.decoder)
            self.to(dtype=dtype)
            if channels_last:
                self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.dtype, self.channels_last = dtype, channels_last
        self.source = source_key(vae)
        self.calls = 0  # decodes run (for tests)
        self.compiled: dict = {}  # compile key -> compiled forward

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def source_key(vae) -> tuple:
    """The VAE decoder's weights by address, version, dtype and device (a change remakes the twin)."""
    params = list(vae.decoder.parameters())
    if vae.post_quant_conv is not None:
        params += list(vae.post_quant_conv.parameters())
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)


def twin(vae, dtype: torch.dtype, channels_last: bool = True) -> DecoderTwin:
    """The VAE's cached decoder twin for ``dtype`` (made on first use)."""
    cached = _TWINS.get(vae)
    if cached is None or (cached.dtype, cached.channels_last, cached.source) != (
        dtype,
        channels_last,
        source_key(vae),
    ):
        cached = _TWINS[vae] = DecoderTwin(vae, dtype, channels_last)
    return cached


def release(vae) -> None:
    _TWINS.pop(vae, None)


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' SDXL tail: de-normalise with the VAE's ``latents_mean``/``latents_std`` when it has
    them, else divide by ``scaling_factor``."""
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        return latents * std / cfg.scaling_factor + mean
    return latents / cfg.scaling_factor


def decode(pipe, latents: torch.Tensor, model: DecoderTwin, forward=None, output_type: str = "pil"):
    """Latents ``[B, 4, h, w]`` -> images as the stock pipeline returns them."""
    z = unscale(pipe.vae, latents).to(model.dtype)
    if model.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    image = (model if forward is None else forward)(z).float()  # [B, 3, H, W] in [-1, 1]
    model.calls += 1
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type=output_type)


def fast_decoder(pipe, options: FastOptions):
    """The VAE decoder twin a call decodes with (``fast.vae``), or None for the stock decode."""
    if options.vae_decode == "stock" or not usable(pipe):
        return None
    vae = pipe.vae
    return twin(vae, decode_dtype(vae, options.vae_decode), channels_last=True)


def decode_latents(pipe, latents: torch.Tensor, decoder, options: FastOptions, output_type: str = "pil"):
    """Decode with the twin; compiled (cached per compile key) when ``compile_vae``."""
    forward = None
    if options.compile_vae:
        compiling.configure_dynamo()
        key = compiling.compile_key("vae-twin", options)
        if key not in decoder.compiled:
            kwargs = compiling.compile_kwargs(
                options.compile_backend, options.compile_mode, options.inductor_tuning
            )
            decoder.compiled[key] = torch.compile(decoder, dynamic=False, **kwargs)
        forward = decoder.compiled[key]
    return decode(pipe, latents, decoder, forward, output_type)
