"""Samplers by name, each swapped in for one call only, and the few-step sampling presets.

``SAMPLERS`` maps the request's ``scheduler`` names (``config.SCHEDULERS``) to a diffusers
scheduler class, its extra config and what the class does with three request fields, read from
diffusers 0.42's sources (``tests/pipelines/test_few_step.py`` checks each claim against them):

- ``spacing``: ``set_timesteps`` follows ``config.timestep_spacing`` (``leading`` | ``linspace`` |
  ``trailing``, Table 2 of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", arXiv 2305.08891). LCM and TCD carry the key in their config but ignore it (their
  schedule is evenly spaced on the distillation schedule and always starts at 999), and Karras
  sigmas replace it, so a spacing given for those is refused instead of silently dropped;
- ``custom_timesteps``: ``set_timesteps(timesteps=[...])`` exists (the pipelines' ``timesteps=``);
- ``eta``: ``step(eta=...)`` exists (DDIM's eta; TCD's gamma, its stochasticity). The SDXL
  pipelines pass ``eta=0.0`` unless told otherwise, so that is the default of both.

``scoped_scheduler`` builds the request's sampler from the pipeline's own scheduler config
(``from_config``, with ``timestep_spacing`` when the request gives one) and puts the original back
afterwards, so no request leaks its sampler into the next. ``swap_scheduler`` is the same scope
for an already-built scheduler (DDIM for inversion).

``PRESETS`` are the few-step models' settings as their authors publish them (steps, guidance,
sampler, spacing, timesteps, eta); ``apply_preset`` fills what a request leaves out, so a
request's own ``steps`` / ``guidance`` / ``scheduler`` win. Sources (checked 2026-12):

- SDXL-Lightning, arXiv 2402.13929, https://huggingface.co/ByteDance/SDXL-Lightning (model card):
  ``EulerDiscreteScheduler.from_config(..., timestep_spacing="trailing")``, ``guidance_scale=0``,
  the 2/4/8-step UNet or LoRA with as many steps (the 1-step model predicts x0 instead and is
  left out);
- SDXL-Turbo, arXiv 2311.17042, https://huggingface.co/stabilityai/sdxl-turbo and diffusers'
  "SDXL Turbo" guide: ``guidance_scale=0.0``, 1-4 steps, ``timestep_spacing="trailing"``
  (``EulerAncestralDiscreteScheduler``, the repository's own scheduler config), 512x512;
- Hyper-SD, arXiv 2404.13686, https://huggingface.co/ByteDance/Hyper-SD (model card and its
  ComfyUI scheduler node): the N-step LoRAs with ``DDIMScheduler`` trailing and guidance 0; the
  1-step unified LoRA with ``TCDScheduler`` and ``eta=1.0`` ("lower eta results in more detail
  for multi-steps inference"); the 1-step UNet with ``LCMScheduler`` and ``timesteps=[800]``; the
  CFG-preserving 8/12-step LoRAs with DDIM trailing and guidance 5-8 (they need no low guidance);
- DMD2, arXiv 2405.14867, https://huggingface.co/tianweiy/DMD2 (model card): ``LCMScheduler``,
  ``timesteps=[999, 749, 499, 249]`` ("LCMScheduler's default timesteps are different from the
  one we used for training"), ``guidance_scale=0``;
- LCM-LoRA, arXiv 2311.05556, https://huggingface.co/latent-consistency/lcm-lora-sdxl (model
  card): ``LCMScheduler``, 2-8 steps, guidance disabled or 1.0-2.0.

``few_step_reasons`` recognises a model that needs low guidance (the preset, the sampler LCM/TCD,
or a base / LoRA whose name says Lightning, Turbo, Hyper-SD, DMD2, LCM or TCD), and
``warn_if_high_guidance`` warns when such a request asks for guidance above 2, through the same
channel as the long-prompt warning (``prompts.notify``). See docs/few-step.md.

Leaf module: of ours only ``errors`` and ``prompts`` (the warning); diffusers only inside the scope.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import InstantStyleWarning

SPACINGS = ("leading", "linspace", "trailing")
NUM_TRAIN_TIMESTEPS = 1000  # SDXL's and SD1.5's training schedule: timesteps 0..999
LOW_GUIDANCE = 2.0  # above this, a few-step model's picture burns


class FewStepGuidanceWarning(InstantStyleWarning):
    """Guidance above 2 on a model distilled for few steps and low guidance."""


@dataclass(frozen=True)
class Sampler:
    """A request's sampler: the diffusers class, its extra config, and what it reads."""

    cls: str
    extra: dict = field(default_factory=dict)
    spacing: bool = True  # set_timesteps follows config.timestep_spacing
    custom_timesteps: bool = False  # set_timesteps(timesteps=[...])
    eta: bool = False  # step(eta=...)


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("EulerDiscreteScheduler", custom_timesteps=True),
    "euler-a": Sampler("EulerAncestralDiscreteScheduler"),
    "ddim": Sampler("DDIMScheduler", eta=True),
    "dpm++2m": Sampler("DPMSolverMultistepScheduler", custom_timesteps=True),
    "dpm++2m-karras": Sampler("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, spacing=False),
    "unipc": Sampler("UniPCMultistepScheduler"),
    "heun": Sampler("HeunDiscreteScheduler", custom_timesteps=True),
    "lms": Sampler("LMSDiscreteScheduler"),
    "lcm": Sampler("LCMScheduler", spacing=False, custom_timesteps=True),
    "tcd": Sampler("TCDScheduler", spacing=False, custom_timesteps=True, eta=True),
}
FEW_STEP_SAMPLERS = ("lcm", "tcd")  # consistency samplers: only for models distilled for them


@dataclass(frozen=True)
class Preset:
    """A few-step model's published settings; ``None`` leaves the request's own value."""

    summary: str
    scheduler: str
    steps: int
    guidance: float
    timestep_spacing: str | None = None
    timesteps: tuple[int, ...] | None = None
    eta: float | None = None
    size: int | None = None  # the training resolution (text-to-image only)
    low_guidance: bool = True  # the model burns at guidance > 2
    source: str = ""

    def fields(self) -> dict:
        """The request fields this preset fills (``size`` aside)."""
        values = {
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance": self.guidance,
            "timestep_spacing": self.timestep_spacing,
            "timesteps": list(self.timesteps) if self.timesteps else None,
            "eta": self.eta,
        }
        return {k: v for k, v in values.items() if v is not None}


_LIGHTNING = "https://huggingface.co/ByteDance/SDXL-Lightning"
_TURBO = "https://huggingface.co/stabilityai/sdxl-turbo"
_HYPER = "https://huggingface.co/ByteDance/Hyper-SD"
_DMD2 = "https://huggingface.co/tianweiy/DMD2"
_LCM = "https://huggingface.co/latent-consistency/lcm-lora-sdxl"
PRESETS: dict[str, Preset] = {
    **{
        f"lightning-{n}step": Preset(
            f"SDXL-Lightning {n}-step UNet or LoRA: Euler, trailing, guidance 0",
            "euler",
            n,
            0.0,
            "trailing",
            source=_LIGHTNING,
        )
        for n in (2, 4, 8)
    },
    **{
        f"turbo-{n}step": Preset(
            f"SDXL-Turbo, {n} step{'s' if n > 1 else ''}: Euler a, trailing, guidance 0, 512 px",
            "euler-a",
            n,
            0.0,
            "trailing",
            size=512,
            source=_TURBO,
        )
        for n in (1, 4)
    },
    "hyper-sd-1step": Preset(
        "Hyper-SD 1-step unified LoRA: TCD, eta 1.0, guidance 0", "tcd", 1, 0.0, eta=1.0, source=_HYPER
    ),
    "hyper-sd-1step-unet": Preset(
        "Hyper-SDXL 1-step UNet: LCM, timestep 800, guidance 0",
        "lcm",
        1,
        0.0,
        timesteps=(800,),
        source=_HYPER,
    ),
    **{
        f"hyper-sd-{n}step": Preset(
            f"Hyper-SD {n}-step LoRA: DDIM, trailing, guidance 0", "ddim", n, 0.0, "trailing", source=_HYPER
        )
        for n in (2, 4, 8)
    },
    **{
        f"hyper-sd-{n}step-cfg": Preset(
            f"Hyper-SD {n}-step CFG LoRA: DDIM, trailing, guidance 5 (5-8 work; negative prompts apply)",
            "ddim",
            n,
            5.0,
            "trailing",
            low_guidance=False,
            source=_HYPER,
        )
        for n in (8, 12)
    },
    "dmd2-4step": Preset(
        "DMD2 4-step UNet or LoRA: LCM, timesteps 999/749/499/249, guidance 0",
        "lcm",
        4,
        0.0,
        timesteps=(999, 749, 499, 249),
        source=_DMD2,
    ),
    **{
        f"lcm-lora-{n}step": Preset(
            f"LCM-LoRA, {n} steps: LCM, guidance 1 (no CFG; up to 2 works)", "lcm", n, 1.0, source=_LCM
        )
        for n in (4, 8)
    },
}

# A base or LoRA whose name says it is distilled for few steps (Hyper-SD's CFG LoRAs excepted).
_FEW_STEP_NAME = re.compile(r"lightning|turbo|hyper[-_ ]?sd|dmd2|\blcm|lcm[-_]|\btcd\b", re.IGNORECASE)
_CFG_NAME = re.compile(r"cfg", re.IGNORECASE)


def apply_preset(data: dict, *, text_to_image: bool) -> dict:
    """``data`` (a request's raw fields) with ``data["sampling"]``'s preset filling what it
    leaves out (``None`` or absent); an unknown name is left for the schema to refuse. Custom
    timesteps without ``steps`` set the steps (their count); a given ``steps`` is checked later."""
    data = dict(data)
    preset = PRESETS.get(data.get("sampling") or "")
    if preset is not None:
        for key, value in preset.fields().items():
            if data.get(key) is None:
                data[key] = value
        if preset.size and text_to_image:
            for key in ("width", "height"):
                if data.get(key) is None:
                    data[key] = preset.size
    try:
        timesteps = parse_timesteps(data.get("timesteps"))
    except ValueError:
        return data  # the field's own validator says what is wrong
    if data.get("steps") is None and isinstance(timesteps, list | tuple) and timesteps:
        data["steps"] = len(timesteps)
    return data


def parse_timesteps(value):
    """Timesteps as text (a form's box: ``999, 749, 499, 249``, commas or spaces) -> ints; other
    values pass through for the schema to check."""
    if not isinstance(value, str):
        return value
    parts = value.replace(",", " ").split()
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            "give whole timesteps separated by commas or spaces, e.g. 999, 749, 499, 249"
        ) from None


def check_request(req) -> None:
    """The sampling fields together: each one read by the sampler, timesteps that fit the steps.

    Raises ``ValueError`` naming the flags (pydantic makes it one line for every front end)."""
    s = SAMPLERS[req.scheduler]
    preset = f" (from --sampling {req.sampling})" if req.sampling else ""
    if req.task == "plus" and (req.sampling or req.timestep_spacing or req.timesteps or req.eta is not None):
        raise ValueError(
            "--sampling / --timestep-spacing / --timesteps / --eta are not for task plus: the generation "
            "retraces its DDIM inversion's timesteps (InstantStyle-Plus: 50 DDIM steps); drop them"
        )
    _check_window(req)
    if req.timestep_spacing is not None and not s.spacing:
        why = (
            "its schedule is fixed by the distillation schedule (it always starts at 999, as trailing does)"
            if req.scheduler in FEW_STEP_SAMPLERS
            else "Karras sigmas replace it"
        )
        raise ValueError(
            f"--timestep-spacing {req.timestep_spacing}{preset} is not read by --scheduler {req.scheduler}: "
            f"{why}; drop --timestep-spacing or pick euler, euler-a, ddim, dpm++2m, unipc, heun or lms"
        )
    if req.eta is not None and not s.eta:
        raise ValueError(
            f"--eta{preset} is read only by --scheduler ddim and tcd (their step's stochasticity), "
            f"not by {req.scheduler}; drop --eta"
        )
    if req.timesteps is not None:
        ts = list(req.timesteps)
        if not s.custom_timesteps:
            users = ", ".join(n for n, x in SAMPLERS.items() if x.custom_timesteps)
            raise ValueError(
                f"--timesteps{preset} needs a sampler that takes custom timesteps ({users}); "
                f"--scheduler {req.scheduler} does not"
            )
        if req.timestep_spacing is not None:
            raise ValueError(
                "give --timesteps or --timestep-spacing, not both (the timesteps replace the spacing)"
            )
        if any(not (0 <= t < NUM_TRAIN_TIMESTEPS) for t in ts) or any(
            a <= b for a, b in zip(ts, ts[1:], strict=False)
        ):
            raise ValueError(
                f"--timesteps must be strictly descending, each in [0, {NUM_TRAIN_TIMESTEPS - 1}] (got {ts}); "
                "e.g. 999 749 499 249"
            )
        if len(ts) != req.steps:
            raise ValueError(
                f"--steps {req.steps} does not match the {len(ts)} --timesteps {ts}{preset}: "
                "drop --steps (it follows the timesteps) or give as many timesteps as steps"
            )


def _check_window(req) -> None:
    """A ``--style-window`` that selects none of the steps run would drop the style silently.

    Step i of N gets the style when START <= i/N < END (``injection.window_steps``, the same
    rounding); with 1-4 steps a window resolves to whole steps of 1/N each."""
    start, end = req.style_window
    strength = req.effective_strength
    n = (
        int(req.steps * strength) if strength is not None else req.steps
    )  # diffusers runs int(steps x strength)
    eps = 1e-9
    if n >= 1 and max(0, math.ceil(start * n - eps)) >= min(n, math.ceil(end * n - eps)):
        raise ValueError(
            f"--style-window {start:g}:{end:g} selects none of the {n} denoising steps (step i of N gets the "
            "style when START <= i/N < END); widen the window or use more --steps"
        )


def few_step_reasons(req, names: dict[str, str | None]) -> list[str]:
    """Why ``req`` runs a model that needs guidance <= 2: its preset, its sampler, or a model name
    (``names``: base, vae, ... as the model records them; plus the request's user LoRAs)."""
    reasons = []
    preset = PRESETS.get(req.sampling or "")
    if preset is not None and preset.low_guidance:
        reasons.append(f"--sampling {req.sampling}")
    if req.scheduler in FEW_STEP_SAMPLERS:
        reasons.append(f"--scheduler {req.scheduler}")
    loras = getattr(req, "loras", None) or []  # user LoRAs, where the schema has them
    named = [(k, v) for k, v in names.items() if v] + [("lora", _lora_name(x)) for x in loras]
    for kind, name in named:
        text = str(name)
        if _FEW_STEP_NAME.search(text) and not _CFG_NAME.search(text):
            reasons.append(f"{kind} {text!r}")
    return reasons


def _lora_name(entry) -> str:
    """A user LoRA's name: ``PATH[:SCALE]`` without its scale (or a parsed entry's path)."""
    if isinstance(entry, dict):
        return str(entry.get("path") or entry.get("name") or entry)
    text = str(getattr(entry, "path", None) or entry)
    return re.sub(r":[-+]?[0-9]*\.?[0-9]+$", "", text)


def guidance_warning(req, names: dict[str, str | None]) -> str | None:
    """The warning text for guidance > 2 on a few-step model, or None."""
    if req.guidance is None or req.guidance <= LOW_GUIDANCE:
        return None
    reasons = few_step_reasons(req, names)
    if not reasons:
        return None
    return (
        f"--guidance {req.guidance:g} with a few-step model ({', '.join(reasons)}): these are distilled for "
        f"guidance 0-{LOW_GUIDANCE:g} and over-saturate or burn above it; use --guidance 0 (or 1-2), "
        "or a CFG-preserving model (e.g. Hyper-SD's CFG LoRAs, --sampling hyper-sd-8step-cfg)"
    )


def warn_if_high_guidance(req, names: dict[str, str | None]) -> str | None:
    """``guidance_warning``, warned (and collected for a server's job) when there is one."""
    msg = guidance_warning(req, names)
    if msg is not None:
        from .prompts import notify

        notify(msg, FewStepGuidanceWarning)
    return msg


# ---------------------------------------------------------------------- the per-call swap


@contextlib.contextmanager
def swap_scheduler(pipe, scheduler) -> Iterator:
    """Run the block with ``scheduler`` on ``pipe``, then put the original back (even on error)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield scheduler
    finally:
        pipe.scheduler = original


@contextlib.contextmanager
def scoped_scheduler(pipe, name: str, *, timestep_spacing: str | None = None) -> Iterator:
    """The named sampler for one call (no state leaks between requests), with ``timestep_spacing``
    when given (else the pipeline's own config's); SDXL's own is reused when nothing changes."""
    import diffusers

    s = SAMPLERS[name]
    overrides = dict(s.extra)
    if timestep_spacing is not None and timestep_spacing != pipe.scheduler.config.get("timestep_spacing"):
        overrides["timestep_spacing"] = timestep_spacing
    if type(pipe.scheduler).__name__ == s.cls and not overrides:
        yield pipe.scheduler
        return
    with swap_scheduler(
        pipe, getattr(diffusers, s.cls).from_config(pipe.scheduler.config, **overrides)
    ) as new:
        yield new


def used(scheduler, name: str) -> dict:
    """What the call's sampler ran: its class, spacing (where it reads one) and timesteps."""
    s, timesteps = SAMPLERS[name], getattr(scheduler, "timesteps", None)
    return {
        "class": type(scheduler).__name__,
        "timestep_spacing": scheduler.config.get("timestep_spacing") if s.spacing else None,
        "timesteps": [] if timesteps is None else [int(round(float(t))) for t in timesteps],
    }
