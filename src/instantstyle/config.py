"""The one request schema shared by the CLI, the Python API, the web UI and the HTTP API.

Ranges, defaults and help text are declared once here; the CLI flags and the web-UI widgets are
generated from the fields (``schema_flags``; front-end hints ride on each field as ``frontend(...)``),
and every cross-field rule runs in the validators (``request_rules``), so all front ends agree.
Unknown keys are rejected (``extra="forbid"``), and a validation error becomes one line that
names the field, the value and the rule (``format_validation_error``).
"""

from __future__ import annotations

import importlib.util
import typing
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

from . import request_rules, schedulers
from .errors import InstantStyleError
from .request_rules import (  # noqa: F401 - the schema's names
    DEFAULT_GUIDANCE,
    DEFAULT_STRENGTH,
    LAYOUT_MODES,
    METHOD_DEFAULTS,
    PLUS_DEFAULTS,
    PLUS_NEGATIVE_PROMPT,
    method_defaults,
    task_defaults,
)
from .schema_flags import flag_name as schema_flag_name
from .schema_flags import frontend

SCHEDULERS = tuple(schedulers.SAMPLERS)  # euler, euler-a, ddim, dpm++2m(-karras), unipc, heun, lms, lcm, tcd
SAMPLING_PRESETS = tuple(schedulers.PRESETS)  # lightning-4step, dmd2-4step, ... (docs/few-step.md)
# Samplers whose diffusers class needs a package of its own: scheduler -> (module, pip package).
SCHEDULER_NEEDS = {"lms": ("scipy", "scipy")}
MODES = ("style", "layout", "style+layout", "full", "strong", "composition", "precise")
MAX_SEED = 2**63 - 1
TASKS = ("txt2img", "controlnet", "img2img", "inpaint", "plus")
DEFAULT_CONTENT_IP_SCALE = 0.2
INVERSIONS = ("renoise", "ddim")
DEFAULT_RENOISE_STEPS = 1  # InstantStyle-Plus's RunConfig(num_renoise_steps=1)
INPAINT_STYLE_REGIONS = ("everywhere", "mask")
# Front ends group the fields by these keys (``frontend(group=...)``): argument groups, accordions.
GROUPS = {
    "style": "style",
    "leakage": "leakage controls (see docs/leakage.md)",
    "method": "baseline methods (--method style-aligned | visual-style-prompting | b-lora)",
    "content": "content image (ControlNet, img2img, inpainting, InstantStyle-Plus)",
    "sampling": "prompt and sampling",
    "loras": "user LoRAs (see docs/loras.md)",
}
NOT_SERVED = (
    "b-lora reads a LoRA directory on the server, and a served request never names a server file "
    "(the HTTP API refuses method b-lora); CLI and Python only"
)
MAX_LORAS = 8  # user LoRAs per request


class GenerateRequest(BaseModel):
    """Everything that determines a generated image (together with the loaded models)."""

    # allow_inf_nan=False: Infinity/NaN are refused in every float field (and list of floats), present or future.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=2000,
        description="What to draw.",
        json_schema_extra=frontend(
            group="sampling", metavar="TEXT", label="Prompt", placeholder="a cat, masterpiece", lines=2
        ),
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="What to avoid. None behaves as diffusers' negative_prompt=None.",
        json_schema_extra=frontend(group="sampling", metavar="TEXT"),
    )
    style: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Style references: image paths or @name of a saved style (the Python API also takes PIL images).",
        json_schema_extra=frontend(
            group="style", repeat=True, metavar="IMG|@NAME", widget="style", cli_help="Repeat for several."
        ),
    )
    style_weights: list[float] | None = Field(
        default=None,
        description="One weight per style reference (>= 0); references are averaged in CLIP space.",
        json_schema_extra=frontend(group="style", metavar="W", label="Style weights (optional)"),
    )
    style_combine: Literal["mean", "concat"] = Field(
        default="mean",
        description="mean: weighted mean of the image embeddings; concat: one token set per image.",
        json_schema_extra=frontend(group="style"),
    )
    method: str = Field(
        default="instantstyle",
        description="Generation method (see `instantstyle generate --help`).",
        json_schema_extra=frontend(group="style", widget="method"),
    )
    mode: Literal[MODES] = Field(  # type: ignore[valid-type]
        default="style",
        description="Blocks that get the style (SDXL; SD1.5: style = up_blocks.1, layout = down_blocks.2 + mid_block, "
        "see `instantstyle blocks --base`): style = up_blocks.0.attentions.1, layout = down_blocks.2.attentions.1, "
        "style+layout = both, full = every block (plain IP-Adapter), strong = every block but the layout one, "
        "composition = the layout block only (= layout), precise = style + the layout block in the unconditional "
        "branch only (guidance then pushes away from the reference's layout; see --layout-boost).",
        json_schema_extra=frontend(group="style", widget="radio", label="Mode (blocks that get the style)"),
    )
    scale: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="IP-Adapter strength, multiplies every block scale.",
        json_schema_extra=frontend(group="style", label="Style strength"),
    )
    blocks: str | None = Field(
        default=None,
        max_length=4000,
        description="Custom per-block scales, replacing --mode: 'up_blocks.0.attentions.1=1.0,down_blocks.2.attentions.1=0.5'; "
        "layers too: 'up_blocks.0.attentions.1.transformer_blocks.3=0'.",
        json_schema_extra=frontend(
            group="style", metavar="SPEC", widget="blocks", cli_help="See `instantstyle blocks`."
        ),
    )
    content_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="Names the reference's content (e.g. 'a dog') to subtract it from the style.",
        json_schema_extra=frontend(
            group="style", metavar="TEXT", label="Content of the reference to remove (e.g. 'a dog')"
        ),
    )
    content_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="How much of the content prompt to subtract (default 0.5 with a content prompt).",
        json_schema_extra=frontend(group="style"),
    )
    layout_boost: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="precise: scale of the layout block's unconditional-branch reference, times --scale (default 1).",
        json_schema_extra=frontend(group="leakage"),
    )
    composition: str | None = Field(
        default=None,
        max_length=4096,
        description="A second reference whose layout goes into the layout block (down_blocks.2.attentions.1) while "
        "--style goes into the style blocks (same weights, one image encoder).",
        json_schema_extra=frontend(
            group="leakage",
            metavar="IMAGE",
            widget="image",
            elem_id="composition-image",
            label="Composition image (its layout, into the layout block)",
        ),
    )
    composition_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="Layout-block scale of the --composition image (default 1.0; not times --scale).",
        json_schema_extra=frontend(group="leakage"),
    )
    negative_style: str | None = Field(
        default=None,
        max_length=4096,
        description="An image whose embedding replaces the zeros of the unconditional branch (e.g. the content "
        "photo): guidance steers away from what it shows.",
        json_schema_extra=frontend(
            group="leakage",
            metavar="IMAGE",
            widget="image",
            elem_id="negative-style-image",
            label="Negative style image (steer away from it)",
        ),
    )
    negative_style_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="Multiplies the --negative-style embedding in CLIP space (default 1.0; 0 = zeros, no effect).",
        json_schema_extra=frontend(group="leakage"),
    )
    style_window: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="START:END fractions of the denoising steps that get the style; step i of N gets it when "
        "START <= i/N < END (e.g. 0:0.8 lets the prompt finish the details).",
        json_schema_extra=frontend(group="leakage", metavar="START:END"),
    )
    steps: int = Field(
        default=30, ge=1, le=500, description="Denoising steps.", json_schema_extra=frontend(group="sampling")
    )
    guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=50.0,
        description="Classifier-free guidance scale (<= 1 disables CFG); None: the method's default (its authors').",
        json_schema_extra=frontend(group="sampling"),
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Random seed (torch.Generator('cpu')); None picks one.",
        json_schema_extra=frontend(group="sampling", label="Seed (empty: random)", placeholder="random"),
    )
    width: int | None = Field(
        default=None,
        ge=64,
        le=4096,
        description="Width in pixels (multiple of 8); default: the model's.",
        json_schema_extra=frontend(group="sampling", metavar="W", step=8),
    )
    height: int | None = Field(
        default=None,
        ge=64,
        le=4096,
        description="Height in pixels (multiple of 8); default: the model's.",
        json_schema_extra=frontend(group="sampling", metavar="H", step=8),
    )
    num_images: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Images per call (one seed, one batch, as diffusers).",
        json_schema_extra=frontend(group="sampling", label="Images"),
    )
    scheduler: Literal[SCHEDULERS] = Field(
        default="euler",
        description="Sampler (lcm and tcd: for models distilled for them, e.g. LCM-LoRA, DMD2, Hyper-SD).",
        json_schema_extra=frontend(group="sampling", label="Sampler"),
    )  # type: ignore[valid-type]
    sampling: Literal[SAMPLING_PRESETS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="A few-step model's published settings: fills the sampler, steps, guidance, spacing, "
        "timesteps and eta it leaves out (docs/few-step.md: each preset and its model card); a value "
        "given with its own flag wins.",
        json_schema_extra=frontend(group="sampling", label="Few-step preset"),
    )
    timestep_spacing: Literal[schedulers.SPACINGS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="How the steps spread over the 1000 training timesteps: leading (SDXL's own), linspace, or "
        "trailing (starts at 999, what few-step models need); default: the scheduler's config. Read by euler, "
        "euler-a, ddim, dpm++2m, unipc, heun and lms (LCM's and TCD's schedules are fixed).",
        json_schema_extra=frontend(group="sampling"),
    )
    timesteps: list[int] | None = Field(
        default=None,
        max_length=50,
        description="Custom timesteps, descending, each in [0, 999] (e.g. DMD2's 999 749 499 249); --steps "
        "follows their count. Samplers: euler, dpm++2m, heun, lcm, tcd.",
        json_schema_extra=frontend(group="sampling", metavar="T", placeholder="999, 749, 499, 249"),
    )
    eta: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="ddim: eta; tcd: gamma, each step's stochasticity (0 = deterministic, the default as in "
        "diffusers' pipelines; Hyper-SD's 1-step LoRA uses 1.0, lower for more steps).",
        json_schema_extra=frontend(group="sampling"),
    )

    # ---- stylizing a content image (ControlNet, img2img, inpainting, regional styles, Plus)
    task: Literal[TASKS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="txt2img, controlnet, img2img, inpaint or plus (InstantStyle-Plus); default: inferred "
        "(--mask -> inpaint, --strength -> img2img, --control -> controlnet, else txt2img).",
        json_schema_extra=frontend(group="content", widget="radio"),
    )
    content: str | None = Field(
        default=None,
        max_length=4096,
        description="Content image to stylize (its structure is kept); the output takes its aspect ratio, "
        "short side at the model's native size.",
        json_schema_extra=frontend(
            group="content",
            metavar="IMAGE",
            widget="image",
            elem_id="content-image",
            label="Content image (used by every task but txt2img)",
        ),
    )
    control: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="ControlNet(s): canny (edges of --content), tile (--content itself), KIND=MODEL to use another "
        "ControlNet for that kind, or any SDXL ControlNet path / Hub id fed its --control-image.",
        json_schema_extra=frontend(
            group="content",
            repeat=True,
            metavar="KIND|KIND=MODEL|MODEL",
            widget="control",
            label="ControlNets",
            cli_help="Repeat for several ControlNets.",
        ),
    )
    control_image: list[str | None] = Field(
        default_factory=list,
        max_length=4,
        description="Control image per --control (None: derived from --content for canny/tile).",
        json_schema_extra=frontend(
            group="content",
            repeat=True,
            flag="--control-image",
            metavar="IMAGE",
            widget="images",
            elem_id="control-files",
            label="Control images (one per ControlNet; none: canny/tile derive theirs from the content image)",
            cli_help="Give it right after the --control it belongs to (e.g. a depth map); canny/tile derive theirs from --content.",
        ),
    )
    control_scale: list[float] = Field(
        default_factory=list,
        max_length=4,
        description="ControlNet conditioning scale: one for all or one per --control, each in [0, 2] "
        "(default: canny 0.6, tile 0.4, other 0.6).",
        json_schema_extra=frontend(group="content"),
    )
    canny_low: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="Canny lower hysteresis threshold.",
        json_schema_extra=frontend(group="content"),
    )
    canny_high: int = Field(
        default=200,
        ge=1,
        le=1000,
        description="Canny upper hysteresis threshold.",
        json_schema_extra=frontend(group="content"),
    )
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="img2img / inpainting: how much of the content is repainted, 0 < F <= 1 "
        "(default: 0.8 img2img, 0.99 inpainting).",
        json_schema_extra=frontend(group="content"),
    )
    mask: str | None = Field(
        default=None,
        max_length=4096,
        description="Inpainting mask: single-channel image the size of --content; white = repaint (and style), "
        "black = keep.",
        json_schema_extra=frontend(
            group="content",
            metavar="MASK",
            widget="mask",
            elem_id="mask-image",
            label="Inpainting mask (white = repaint)",
        ),
    )
    style_masks: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Regional styles: one single-channel mask per --style (white = that style's region), "
        "the size of --content (any size without --content).",
        json_schema_extra=frontend(
            group="style",
            repeat=True,
            flag="--style-mask",
            metavar="MASK",
            widget="masks",
            elem_id="style-mask-files",
            label="Style masks: one per style image, same order (white = that style's region)",
            cli_help="Repeat once per --style, in the same order.",
        ),
    )
    content_ip_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="plus: global IP-Adapter scale of the content image, every block (default 0.2).",
        json_schema_extra=frontend(group="content"),
    )
    inversion_steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="plus: inversion steps; must equal --steps (the generation retraces the inversion's timesteps), "
        "so it is only a check.",
        json_schema_extra=frontend(group="content"),
    )
    inversion: Literal[INVERSIONS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="plus: how the content image is inverted: renoise (the authors', ReNoise) or ddim (plain "
        "DDIM inversion); default renoise.",
        json_schema_extra=frontend(group="content"),
    )
    renoise_steps: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="plus with --inversion renoise: renoise iterations per inversion step "
        "(default 1, the authors'; 0 = plain DDIM steps).",
        json_schema_extra=frontend(group="content"),
    )
    noise_regularization: bool | None = Field(
        default=None,
        description="plus with --inversion renoise: the KL and auto-correlation noise regularisation in the "
        "last steps (t < 250), as the authors (default on).",
        json_schema_extra=frontend(group="content"),
    )
    inpaint_style: Literal[INPAINT_STYLE_REGIONS] = Field(  # type: ignore[valid-type]
        default="everywhere",
        description="inpaint: where the style is injected: everywhere (the InstantStyle inpainting "
        "script) or mask (only where the image is repainted).",
        json_schema_extra=frontend(group="content"),
    )
    inversion_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="plus: prompt describing the content image, conditions the inversion (default: --prompt).",
        json_schema_extra=frontend(group="content", metavar="TEXT"),
    )

    # ---- baselines (instantstyle.methods). Each field is read by the methods listed in
    # ``methods.METHODS[name].options``; a non-default value for another method is an error.
    reference_prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="style-aligned, visual-style-prompting: a description of the style image "
        "(e.g. 'a watercolour painting of a harbour'); StyleAligned inverts the image with it.",
        json_schema_extra=frontend(group="method", metavar="TEXT"),
    )
    attention_layers: str | None = Field(
        default=None,
        max_length=4000,
        description="style-aligned, visual-style-prompting: self-attention layers to patch, comma-separated "
        "blocks/modules/layers or '*' (default: '*' for style-aligned, up_blocks.1 for visual-style-prompting).",
        json_schema_extra=frontend(group="method", metavar="NAMES"),
    )
    share_group_norm: bool = Field(
        default=True,
        description="style-aligned: GroupNorm statistics over [own | reference] features (the authors' "
        "real-image setting; off = their generated-reference demo).",
        json_schema_extra=frontend(group="method"),
    )
    shared_score_shift: float = Field(
        default=0.6931471805599453,
        ge=-10.0,
        le=10.0,
        description="style-aligned: added to the attention logits of the reference's tokens (default log 2, the "
        "authors' real-image setting; 0 = their demo; > 0 strengthens the style).",
        json_schema_extra=frontend(group="method"),
    )
    inversion_offset: int | None = Field(
        default=None,
        ge=0,
        le=500,
        description="style-aligned: the reference row starts this many steps ahead on its inverted trajectory "
        "(default: 5 per 50 steps, the authors'; 0 = none).",
        json_schema_extra=frontend(group="method"),
    )
    style_description: str | None = Field(
        default=None,
        max_length=2000,
        description="style-aligned: style words appended to the prompt (', WORDS.'), as the authors' notebook "
        "(default: the --reference-prompt's text after its last comma, if any; '' = append nothing).",
        json_schema_extra=frontend(group="method", metavar="TEXT"),
    )
    swap_start: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="visual-style-prompting: first fraction of the steps that swaps (0 = from the start).",
        json_schema_extra=frontend(group="method"),
    )
    swap_end: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="visual-style-prompting: fraction of the steps after which swapping stops (1 = to the end).",
        json_schema_extra=frontend(group="method"),
    )
    color_calibration: bool = Field(
        default=True,
        description="visual-style-prompting: AdaIN the predicted x0 toward the reference latent for 100 < t < 150.",
        json_schema_extra=frontend(
            group="method", flag="--no-color-calibration", cli_help="--no-color-calibration skips it."
        ),
    )
    b_lora: str | None = Field(
        default=None,
        max_length=4000,
        description="b-lora: directory written by `instantstyle train-blora`.",
        json_schema_extra=frontend(group="method", metavar="DIR", not_in_ui=NOT_SERVED),
    )
    b_lora_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=4.0,
        description="b-lora: strength of the style LoRA (multiplies its update; the B-LoRA repo's alpha 1.1 = 1.21).",
        json_schema_extra=frontend(group="method", not_in_ui=NOT_SERVED),
    )

    # ---- user LoRAs (instantstyle.loras), with every method and task, for this request only
    loras: list[str] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description="User LoRAs as PATH[:SCALE] (scale default 1.0, in [-10, 10]): a local .safetensors file or "
        "a Hub file 'owner/repo/file.safetensors', kohya/A1111 or diffusers format; for this request only. "
        "A server offers LoRAs by NAME (`instantstyle serve --lora-dir DIR`): NAME[:SCALE].",
        json_schema_extra=frontend(
            group="loras",
            repeat=True,
            flag="--lora",
            metavar="PATH[:SCALE]",
            widget="loras",
            label="LoRAs (NAME or NAME:SCALE)",
            cli_help="Repeat for several, e.g. --lora detail.safetensors:0.7 --lora owner/repo/style.safetensors.",
        ),
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v, info: ValidationInfo):
        """``true``/``false`` are not numbers: refused in any field (or list entry) that does not take a bool."""
        if info.field_name and not _takes_bool(cls.model_fields[info.field_name].annotation):
            values = v if isinstance(v, list | tuple) else [v]
            if any(isinstance(x, bool) for x in values):
                raise ValueError("must be a number or text, not true/false")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler_installed(cls, v: str) -> str:
        module, package = SCHEDULER_NEEDS.get(v, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(
                f"sampler {v!r} needs the package {package!r}: pip install {package} "
                "(or pick another sampler)"
            )
        return v

    @field_validator("timesteps", mode="before")
    @classmethod
    def _parse_timesteps(cls, v):
        return schedulers.parse_timesteps(v)  # a form's text box: "999, 749, 499, 249"

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from .methods import check_name

        return check_name(v)

    @field_validator("style_window", mode="before")
    @classmethod
    def _parse_window(cls, v):
        if isinstance(v, str):
            start, sep, end = v.partition(":")
            if not sep:
                raise ValueError("give START:END fractions of the steps, e.g. 0:0.8")
            try:
                return (float(start), float(end))
            except ValueError:
                raise ValueError("START and END must be numbers, e.g. 0:0.8") from None
        return v

    @field_validator("style_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        start, end = v
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise ValueError(f"START and END must be fractions in [0, 1] ({start:g}:{end:g}); e.g. 0:0.8")
        if start >= end:
            raise ValueError(f"START must be below END ({start:g}:{end:g}); e.g. 0:0.8")
        return (float(start), float(end))

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

    @field_validator("loras")
    @classmethod
    def _loras(cls, v: list[str]) -> list[str]:
        from .loras import check_entries

        return check_entries(v)

    @field_validator("control_scale")
    @classmethod
    def _control_scales(cls, v: list[float]) -> list[float]:
        if any(not (0.0 <= s <= 2.0) for s in v):
            raise ValueError(f"each scale must be in [0, 2] (got {v})")
        return v

    @model_validator(mode="before")
    @classmethod
    def _infer_task(cls, data):
        """Resolve ``task`` from the inputs given, and fill Plus's defaults for what was not given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        task = data.get("task")
        if task is None:
            if data.get("mask") is not None:
                task = "inpaint"
            elif data.get("strength") is not None:
                task = "img2img"
            elif data.get("control"):
                task = "controlnet"
            elif data.get("content") is not None:
                raise ValueError(
                    "--content needs a way to use it: --control canny (keep its edges), --strength F (img2img), "
                    "--mask MASK (inpainting) or --task plus (InstantStyle-Plus)"
                )
            else:
                task = "txt2img"
            data["task"] = task
        if data.get("mode") is not None and data.get("blocks") is not None:
            raise ValueError("give --mode or --blocks, not both (--blocks replaces the preset)")
        data = schedulers.apply_preset(data, text_to_image=task == "txt2img")  # --sampling, custom timesteps
        if data.get("guidance") is None:
            data["guidance"] = default_for("guidance", method=data.get("method"))
        if task == "plus":
            for key, value in PLUS_DEFAULTS.items():
                if data.get(key) in (None, []):
                    data[key] = value
        elif task == "controlnet" and not data.get("control"):
            data["control"] = ["canny"]
        return data

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
        schedulers.check_request(self)  # sampler, spacing, timesteps, eta, presets (before Plus's DDIM rule)
        request_rules.check_stylize(self, n_refs)
        request_rules.check_controls(self)
        if self.swap_start >= self.swap_end:
            raise ValueError(f"swap_start ({self.swap_start}) must be below swap_end ({self.swap_end})")
        from .methods import check_options

        check_options(self)
        return self

    @property
    def effective_composition_scale(self) -> float:
        return 1.0 if self.composition_scale is None else self.composition_scale

    @property
    def effective_negative_style_scale(self) -> float:
        return 1.0 if self.negative_style_scale is None else self.negative_style_scale

    @property
    def effective_strength(self) -> float | None:
        if self.task not in DEFAULT_STRENGTH:
            return None
        return DEFAULT_STRENGTH[self.task] if self.strength is None else self.strength

    @property
    def effective_inversion(self) -> str:
        return self.inversion or "renoise"

    @property
    def effective_content_ip_scale(self) -> float:
        return DEFAULT_CONTENT_IP_SCALE if self.content_ip_scale is None else self.content_ip_scale

    @property
    def effective_content_scale(self) -> float:
        if not self.content_prompt:
            return 0.0
        return 0.5 if self.content_scale is None else self.content_scale


def default_for(name: str, *, task: str | None = None, method: str | None = None):
    """The value field ``name`` takes when a request for ``task`` / ``method`` leaves it out."""
    field = GenerateRequest.model_fields[name]
    value = task_defaults(task).get(name, method_defaults(method).get(name))
    if value is None and not field.is_required():
        value = field.get_default(call_default_factory=True)
    return DEFAULT_GUIDANCE if name == "guidance" and value is None else value


def _takes_bool(annotation) -> bool:
    return annotation is bool or any(_takes_bool(a) for a in typing.get_args(annotation))


def format_validation_error(exc: ValidationError, flag_style: bool = True) -> str:
    """One line: which field, what value, what rule."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "request"
        field = GenerateRequest.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        flag = (
            schema_flag_name(str(err["loc"][0]), field)
            if field is not None and len(err["loc"]) == 1
            else None
        )
        name = (flag or f"--{loc.replace('_', '-')}") if flag_style and err["loc"] else loc
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
