"""The one training configuration schema (CLI flags, Python API and ``--config FILE`` all map onto it).

Strict keys (``extra="forbid"``): a misspelt key in a config file is an error, not a silent
default. The resolved configuration is written next to the outputs (``OUT/train_config.json``)
and ``instantstyle train-adapter --config OUT/train_config.json`` re-runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InstantStyleError
from ..files import atomic_write_text

CONFIG_NAME = "train_config.json"


class TrainConfig(BaseModel):
    """Everything that determines an adapter training run (together with the data and the models)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # models and data -------------------------------------------------------------------------
    base: str = Field(
        ..., min_length=1, description="SDXL base model: local diffusers dir, Hub id, or 'tiny'."
    )
    image_encoder: str | None = Field(
        None,
        description="CLIPVisionModelWithProjection dir or Hub ref (default: h94's bigG encoder; the tiny "
        "model's with --base tiny).",
    )
    data: str = Field(
        ...,
        min_length=1,
        description="Training data: an image folder with one .txt caption per image, a .jsonl/.csv manifest "
        "(image, caption), or WebDataset .tar shards (paths or brace patterns, comma-separated).",
    )
    out: str = Field(
        ..., min_length=1, description="Output directory (adapter, checkpoints, validation grids, logs)."
    )
    blocks: str = Field(
        "style",
        min_length=1,
        description="Blocks that get trained IP-Adapter weights: style, style+layout, all, or a spec as in "
        "generate --blocks (NAME[=0|1],...; =0 excludes a module/layer). Other blocks get none (zeros in the file).",
    )
    init: str | None = Field(None, description="Start from this h94-layout IP-Adapter (.safetensors/.bin).")
    tokens: int = Field(
        4, ge=1, le=64, description="Image tokens of a fresh adapter (ip-adapter_sdxl has 4)."
    )

    # data processing -------------------------------------------------------------------------
    resolution: int | None = Field(
        None,
        ge=32,
        le=4096,
        description="Square training size: resize + centre crop (default: the base model's native size, 1024 for SDXL).",
    )
    cache_dir: str | None = Field(
        None,
        description="Cache latents, text and image embeddings here (the frozen encoders then run once per sample).",
    )

    # optimisation ----------------------------------------------------------------------------
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train for.")
    batch_size: int = Field(4, ge=1, le=1024, description="Samples per process per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step."
    )
    learning_rate: float = Field(
        1e-4, gt=0, le=1.0, description="AdamW learning rate (IP-Adapter used 1e-4)."
    )
    weight_decay: float = Field(1e-2, ge=0, le=1.0, description="AdamW weight decay.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (None: no clipping).")
    adam_8bit: bool = Field(False, description="8-bit AdamW from bitsandbytes (CUDA only).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Frozen weights and activations in this dtype; trained weights stay fp32."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute UNet activations in backward (less memory)."
    )
    ema: bool = Field(
        False,
        description="Keep an exponential moving average of the trained weights; saved as adapter.safetensors.",
    )
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay.")
    text_dropout: float = Field(
        0.05, ge=0, le=1, description="Probability of dropping only the caption (CFG)."
    )
    image_dropout: float = Field(
        0.05, ge=0, le=1, description="Probability of dropping only the image embedding."
    )
    both_dropout: float = Field(0.05, ge=0, le=1, description="Probability of dropping both.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for data order, noise, timesteps and dropout.")

    # checkpoints, validation, output ----------------------------------------------------------
    checkpoint_every: int = Field(
        500, ge=0, description="Save a resumable checkpoint every N steps (0: never)."
    )
    keep_checkpoints: int | None = Field(
        3, ge=1, description="Keep only the newest N checkpoints (None: all)."
    )
    resume: str | None = Field(None, description="'latest' or a checkpoint directory to resume from.")
    validate_every: int = Field(
        0, ge=0, description="Render validation images every N steps (0: only at the end if prompts given)."
    )
    validation_prompts: list[str] = Field(
        default_factory=list, description="Validation prompts (default: captions of the first samples)."
    )
    validation_images: list[str] = Field(
        default_factory=list, description="Validation style images (default: the first samples)."
    )
    validation_seeds: list[int] = Field(
        default_factory=lambda: [0, 1],
        min_length=1,
        max_length=16,
        description="Fixed seeds of the validation images (grid columns).",
    )
    validation_steps: int = Field(30, ge=1, le=500, description="Denoising steps of validation images.")
    validation_guidance: float = Field(5.0, ge=0, le=50, description="CFG scale of validation images.")
    save_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="dtype of the saved adapter (h94 ships fp16)."
    )
    log_every: int = Field(10, ge=1, description="Append loss/throughput to train_log.jsonl every N steps.")

    @field_validator("validation_prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("validation prompts must not be blank")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.text_dropout + self.image_dropout + self.both_dropout > 1:
            raise ValueError("text_dropout + image_dropout + both_dropout must be <= 1")
        if self.resolution is not None and self.resolution % 8:
            raise ValueError(
                f"resolution must be a multiple of 8 (got {self.resolution}); try {self.resolution - self.resolution % 8}"
            )
        return self

    # ------------------------------------------------------------------------------ files

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


def format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; valid keys: {', '.join(TrainConfig.model_fields)}"
        parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)


def make_config(**params) -> TrainConfig:
    """Build and validate a config, raising ``InstantStyleError`` with a one-line message."""
    try:
        return TrainConfig(**params)
    except ValidationError as exc:
        raise InstantStyleError(f"training config: {format_error(exc)}") from None


def read_config_file(path: str | Path) -> dict:
    """Read a JSON or YAML training config as a dict (validated later, merged with CLI flags)."""
    path = Path(path)
    if not path.is_file():
        raise InstantStyleError(
            f"--config '{path}' does not exist; give the train_config.json of an earlier run"
        )
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise InstantStyleError(
            f"--config '{path}' could not be parsed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(data, dict):
        raise InstantStyleError(f"--config '{path}' must hold a mapping of keys to values")
    return data


# ---------------------------------------------------------------------- command-line flags

REQUIRED = ("base", "data", "out")  # required unless --config gives them


def add_arguments(parser) -> None:
    """One flag per ``TrainConfig`` field (``--max-steps``...), made by the shared schema builder
    (``schema_flags.add_flags``: help, ranges, choices and defaults from the schema).

    Defaults are left to the schema (flags not given are absent), so ``--config FILE`` values are
    overridden only by the flags actually given.
    """
    from ..schema_flags import add_flags

    groups = {
        "models and data": (
            "base",
            "image_encoder",
            "data",
            "out",
            "blocks",
            "init",
            "tokens",
            "resolution",
            "cache_dir",
        ),
        "optimisation": (
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "weight_decay",
            "lr_warmup_steps",
            "max_grad_norm",
            "adam_8bit",
            "mixed_precision",
            "gradient_checkpointing",
            "ema",
            "ema_decay",
            "text_dropout",
            "image_dropout",
            "both_dropout",
            "seed",
        ),
    }
    made = {title: parser.add_argument_group(title) for title in (*groups, "checkpoints, validation, output")}

    def group(name: str):
        return made[
            next((t for t, names in groups.items() if name in names), "checkpoints, validation, output")
        ]

    add_flags(
        parser,
        TrainConfig,
        group=group,
        note=lambda name: " [required unless in --config]" if name in REQUIRED else None,
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="re-run a resolved config (OUT/train_config.json, or YAML); flags given here override it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args) -> TrainConfig:
    """Merge ``--config FILE`` (if any) with the flags given; validate strictly."""
    params = read_config_file(args.config) if args.config else {}
    given = {name: getattr(args, name) for name in TrainConfig.model_fields if hasattr(args, name)}
    for name, value in list(given.items()):
        if (
            isinstance(value, str)
            and value.lower() == "none"
            and not TrainConfig.model_fields[name].is_required()
        ):
            given[name] = None
    params.update(given)
    missing = [f"--{n}" for n in REQUIRED if n not in params]
    if missing:
        raise InstantStyleError(
            f"train-adapter needs {', '.join(missing)} (or --config FILE of an earlier run)"
        )
    return make_config(**params)
