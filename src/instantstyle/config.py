"""The one request schema shared by the CLI, the Python API, the web UI and the HTTP API.

Ranges, defaults and help text are declared once here; front ends only parse and present.
Unknown keys are rejected (``extra="forbid"``), and a validation error becomes one line that
names the field, the value and the rule (``format_validation_error``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InstantStyleError

SCHEDULERS = ("euler", "euler-a", "ddim", "dpm++2m", "dpm++2m-karras", "unipc", "heun", "lms")
MODES = ("style", "layout", "style+layout", "full")
MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    """Everything that determines a generated image (together with the loaded models)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: str = Field(..., min_length=1, max_length=2000, description="What to draw.")
    negative_prompt: str | None = Field(
        None, max_length=2000, description="What to avoid. None behaves as diffusers' negative_prompt=None."
    )
    style: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Style references: image paths or @name of a saved style (the Python API also takes PIL images).",
    )
    style_weights: list[float] | None = Field(
        None, description="One weight per style reference (>= 0); references are averaged in CLIP space."
    )
    style_combine: Literal["mean", "concat"] = Field(
        "mean", description="mean: weighted mean of the image embeddings; concat: one token set per image."
    )
    method: str = Field("instantstyle", description="Generation method (see `instantstyle generate --help`).")
    mode: Literal["style", "layout", "style+layout", "full"] = Field(
        "style",
        description="Blocks that get the style: style = up_blocks.0.attentions.1, layout = down_blocks.2.attentions.1, "
        "style+layout = both, full = every block (plain IP-Adapter).",
    )
    scale: float = Field(1.0, ge=0.0, le=10.0, description="IP-Adapter strength, multiplies every block scale.")
    blocks: str | None = Field(
        None,
        max_length=4000,
        description="Custom per-block scales, replacing --mode: 'up_blocks.0.attentions.1=1.0,down_blocks.2.attentions.1=0.5'; "
        "layers too: 'up_blocks.0.attentions.1.transformer_blocks.3=0'.",
    )
    content_prompt: str | None = Field(
        None, max_length=2000, description="Names the reference's content (e.g. 'a dog') to subtract it from the style."
    )
    content_scale: float | None = Field(
        None, ge=0.0, le=10.0, description="How much of the content prompt to subtract (default 0.5 with a content prompt)."
    )
    steps: int = Field(30, ge=1, le=500, description="Denoising steps.")
    guidance: float = Field(5.0, ge=0.0, le=50.0, description="Classifier-free guidance scale (<= 1 disables CFG).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed (torch.Generator('cpu')); None picks one.")
    width: int | None = Field(None, ge=64, le=4096, description="Width in pixels (multiple of 8); default: the model's.")
    height: int | None = Field(None, ge=64, le=4096, description="Height in pixels (multiple of 8); default: the model's.")
    num_images: int = Field(1, ge=1, le=16, description="Images per call (one seed, one batch, as diffusers).")
    scheduler: Literal[SCHEDULERS] = Field("euler", description="Sampler.")  # type: ignore[valid-type]

    # Baselines (instantstyle.methods). Each field is read by the methods listed in
    # ``methods.METHODS[name].options``; a non-default value for another method is an error.
    reference_prompt: str | None = Field(
        None, max_length=2000,
        description="style-aligned, visual-style-prompting: a description of the style image "
        "(e.g. 'a watercolour painting of a harbour'); StyleAligned inverts the image with it.",
    )
    attention_layers: str | None = Field(
        None, max_length=4000,
        description="style-aligned, visual-style-prompting: self-attention layers to patch, comma-separated "
        "blocks/modules/layers or '*' (default: '*' for style-aligned, up_blocks.1 for visual-style-prompting).",
    )
    share_group_norm: bool = Field(
        False, description="style-aligned: GroupNorm statistics over [own | reference] features (the paper's "
        "real-image setting).",
    )
    shared_score_shift: float = Field(
        0.0, ge=-10.0, le=10.0,
        description="style-aligned: added to the attention logits of the reference's tokens (log 2 = 0.69 in the "
        "paper's real-image setting; > 0 strengthens the style).",
    )
    swap_start: float = Field(
        0.0, ge=0.0, le=1.0, description="visual-style-prompting: first fraction of the steps that swaps (0 = from the start)."
    )
    swap_end: float = Field(
        1.0, ge=0.0, le=1.0, description="visual-style-prompting: fraction of the steps after which swapping stops (1 = to the end)."
    )
    color_calibration: bool = Field(
        True, description="visual-style-prompting: AdaIN the predicted x0 toward the reference latent for 100 < t < 150."
    )
    lora: str | None = Field(
        None, max_length=4000, description="b-lora: directory written by `instantstyle train-blora`."
    )
    lora_scale: float = Field(
        1.0, ge=0.0, le=4.0,
        description="b-lora: strength of the style LoRA (multiplies its update; the B-LoRA repo's alpha 1.1 = 1.21).",
    )

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from .methods import check_name

        return check_name(v)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}); try {v - v % 8}")
        return v

    @field_validator("style_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not (w >= 0) for w in v):
            raise ValueError(f"weights must be >= 0 (got {v})")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        if self.style_weights is not None and self.style and len(self.style_weights) != len(self.style):
            raise ValueError(
                f"style_weights has {len(self.style_weights)} values for {len(self.style)} style references"
            )
        if self.content_scale is not None and not self.content_prompt:
            raise ValueError("content_scale needs a content_prompt")
        if self.swap_start >= self.swap_end:
            raise ValueError(f"swap_start ({self.swap_start}) must be below swap_end ({self.swap_end})")
        from .methods import check_options

        check_options(self)
        return self

    @property
    def effective_content_scale(self) -> float:
        if not self.content_prompt:
            return 0.0
        return 0.5 if self.content_scale is None else self.content_scale


def format_validation_error(exc: ValidationError, flag_style: bool = True) -> str:
    """One line: which field, what value, what rule."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "request"
        name = f"--{loc.replace('_', '-')}" if flag_style and err["loc"] else loc
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
        parts.append(f"{name}: {msg}{shown}")
    return "; ".join(parts)


def make_request(flag_style: bool = True, **params) -> GenerateRequest:
    """Build and validate a request, raising ``InstantStyleError`` with a one-line message."""
    try:
        return GenerateRequest(**params)
    except ValidationError as exc:
        raise InstantStyleError(format_validation_error(exc, flag_style)) from None
