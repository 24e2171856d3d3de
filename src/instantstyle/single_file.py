"""Single-file checkpoints (Civitai / A1111 ``.safetensors``): what family a file is, and loading it.

Finetunes such as Juggernaut, RealVis, Pony or DreamShaper XL (and SD1.5 ones such as
DreamShaper 8 or Realistic Vision) ship as one file in the original (LDM) key layout. diffusers
loads them with ``StableDiffusionXLPipeline.from_single_file`` (``StableDiffusionPipeline`` for SD1.5); the
component configs come from a diffusers-layout reference (``config=``: a Hub id or a local
directory, configs only, a few KB), so loading works offline once that is cached.

The family is read from the file's key names (only the header is read, no tensors): SDXL has
two text towers under ``conditioner.embedders``; SD1.x one CLIP-L under ``cond_stage_model.transformer``;
SD2.x an OpenCLIP tower under ``cond_stage_model.model``; SD3, FLUX, a lone VAE or a LoRA have
their own tell-tale keys. SDXL and SD1.x are supported as bases here; anything else is a one-line
error that says what the file is.
"""

from __future__ import annotations

from pathlib import Path

from . import sources
from .download import command_for, missing
from .errors import InstantStyleError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The diffusers-layout repository whose configs describe each family's single files.
REFERENCE_CONFIG = {"sdxl": sources.DEFAULT_BASE, "sd15": sources.SD15_BASE}
PIPELINE_CLASS = {"sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}
FAMILY_NAMES = {
    "sdxl": "an SDXL checkpoint",
    "sd15": "a Stable Diffusion 1.x checkpoint",
    "sd2": "a Stable Diffusion 2.x checkpoint",
    "sd3": "a Stable Diffusion 3 checkpoint",
    "flux": "a FLUX checkpoint",
    "vae": "a VAE on its own",
    "lora": "a LoRA",
    "diffusers-unet": "a diffusers-layout UNet",
    "unknown": "not a Stable Diffusion checkpoint",
}


def is_single_file(spec: str) -> bool:
    return str(spec).lower().endswith(SINGLE_FILE_SUFFIXES)


def read_keys(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint (the safetensors header only; a .ckpt must be unpickled)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        import torch

        data = torch.load(str(path), map_location="meta", weights_only=True)
        return list(data.get("state_dict", data))
    except Exception as exc:  # safetensors/pickle errors have no common base class
        raise InstantStyleError(
            f"'{path}' could not be read as a checkpoint ({type(exc).__name__}); "
            "is it a complete .safetensors file?"
        ) from None


def family_of_keys(keys: list[str]) -> str:
    """``sdxl`` | ``sd15`` | ``sd2`` | ``sd3`` | ``flux`` | ``vae`` | ``lora`` | ``diffusers-unet`` | ``unknown``."""
    ks = set(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if any(".lora_down." in k or ".lora_A." in k or k.startswith("lora_unet_") for k in keys):
        return "lora"
    if has("conditioner.embedders.") or "model.diffusion_model.label_emb.0.0.weight" in ks:
        return "sdxl"
    if any("joint_blocks." in k for k in keys):
        return "sd3"
    if any("double_blocks." in k for k in keys):
        return "flux"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("model.diffusion_model.input_blocks."):
        return "sd15"
    if (has("encoder.") or has("first_stage_model.")) and (
        has("decoder.") or has("first_stage_model.decoder.")
    ):
        return "vae"
    if has("down_blocks.") and has("conv_in."):
        return "diffusers-unet"
    return "unknown"


def check_base_family(path: str | Path, spec: str) -> str:
    """The family of a single-file base, or a one-line error naming what the file is."""
    family = family_of_keys(read_keys(path))
    if family not in REFERENCE_CONFIG:
        hint = {
            "lora": "; pass it with --lora and give a base model with --base",
            "vae": "; pass it with --vae",
        }.get(family, "; --base takes an SDXL or SD1.5 checkpoint")
        raise InstantStyleError(
            f"--base '{spec}' is {FAMILY_NAMES[family]}, not a supported base model{hint}"
        )
    return family


def load_pipeline(path: str | Path, spec: str, dtype, config: str | None):
    """``from_single_file`` with the family's reference configs (``config`` overrides them)."""
    import diffusers

    family = check_base_family(path, spec)
    config = config or REFERENCE_CONFIG[family]
    src = sources.parse_source(config)
    if src.local is not None and not (src.local / "model_index.json").is_file():
        raise missing("base config", src, " as a diffusers directory (no model_index.json)")
    # SD1.5 without its safety checker, as from a diffusers directory (models.load_base_pipeline).
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    try:
        return getattr(diffusers, PIPELINE_CLASS[family]).from_single_file(
            str(path),
            config=str(src.local or src.spec),
            dtype=dtype,
            local_files_only=sources.offline() or src.local is not None,
            **extra,
        )
    except (OSError, ValueError) as exc:
        if src.local is None:
            known = {sources.DEFAULT_BASE: "base-config", sources.SD15_BASE: "sd15-config"}
            fetch = (
                command_for([known[src.spec]])
                if src.spec in known
                else f"hf download {src.spec} --include '*.json' --include '*.txt'"
            )
            raise InstantStyleError(
                f"the configs for single-file base '{spec}' ({config}) are not available "
                f"({str(exc).splitlines()[0][:120]}); fetch them with: {fetch}"
            ) from None
        raise InstantStyleError(
            f"single-file base '{spec}' could not be loaded: {str(exc).splitlines()[0]}"
        ) from None
