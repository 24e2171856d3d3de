"""The one request schema shared by the CLI, the Python API, the web UI and the HTTP API.

Ranges, defaults and help text are declared once here; front ends only parse and present.
Unknown keys are rejected (``extra="forbid"``), and a validation error becomes one line that
names the field, the value and the rule (``format_validation_error``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
    def _consistent(self, info: ValidationInfo) -> GenerateRequest:
        # Front ends that pass images in memory (web UI, HTTP uploads) validate with
        # context={"style_images": N}: the weights then cover those N images first, then ``style``.
        extra = int((info.context or {}).get("style_images", 0)) if info is not None else 0
        n_refs = len(self.style) + extra
        if self.style_weights is not None and n_refs and len(self.style_weights) != n_refs:
            raise ValueError(
                f"style_weights has {len(self.style_weights)} values for {n_refs} style references"
            )
        if self.content_scale is not None and not self.content_prompt:
            raise ValueError("content_scale needs a content_prompt")
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
