"""Benchmark manifests for ``instantstyle eval``: style images x prompts x settings x seeds.

A manifest (JSON, ``Manifest``) expands into jobs; missing images are generated with the loaded
model, existing ones are reused after checking they were made with the same parameters
(``IDENTITY``), so a run can be interrupted and resumed and a second run generates nothing.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import methods as methods_mod
from ..config import GenerateRequest, format_validation_error, make_request
from ..errors import InstantStyleError
from ..images import load_image, read_metadata

# Request fields that identify an output; a reused file must match the request on all of them.
IDENTITY = (
    "prompt",
    "negative_prompt",
    "method",
    "mode",
    "scale",
    "blocks",
    "content_prompt",
    "content_scale",
    "steps",
    "guidance",
    "seed",
    "width",
    "height",
    "scheduler",
    "timestep_spacing",
    "timesteps",
    "eta",
    "reference_prompt",
    "attention_layers",
    "share_group_norm",
    "shared_score_shift",
    "inversion_offset",
    "style_description",
    "swap_start",
    "swap_end",
    "color_calibration",
    "b_lora_scale",
)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# ---------------------------------------------------------------------- manifests


class StyleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="Style image, relative to the manifest's folder.")
    content: str | None = Field(
        None,
        description="What the image depicts ('a harbour'): the content prompt of "
        "settings with content_subtraction, and the default reference prompt.",
    )
    description: str | None = Field(
        None,
        description="A description of the whole image ('a watercolour painting of "
        "a harbour'): the reference prompt of style-aligned / visual-style-prompting.",
    )


class SettingSpec(BaseModel):
    """A method and its options; any other key is a ``GenerateRequest`` field (checked when expanded)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(None, description="Label in the report (default: the method).")
    method: str = "instantstyle"
    sweep: dict[str, list] = Field(
        default_factory=dict, description="Field -> values; one setting per combination."
    )
    content_subtraction: bool = Field(False, description="Subtract each style's 'content' (instantstyle).")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    styles: list[StyleSpec] = Field(..., min_length=1)
    prompts: list[str] = Field(..., min_length=1)
    settings: list[SettingSpec] = Field(..., min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    defaults: dict = Field(
        default_factory=dict, description="Request fields shared by every setting (steps, size, ...)."
    )


@dataclass
class Job:
    setting: str
    request: GenerateRequest
    style: Path
    out: Path
    prompt_index: int


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise InstantStyleError(f"manifest '{path}' cannot be read; check the path") from None
    except ValueError as exc:
        raise InstantStyleError(f"manifest '{path}' is not valid JSON ({exc})") from None
    try:
        return Manifest(**data) if isinstance(data, dict) else Manifest()
    except ValidationError as exc:
        raise InstantStyleError(
            f"manifest '{path}': {format_validation_error(exc, flag_style=False)}"
        ) from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80] or "setting"


def expand_manifest(manifest: Manifest, root: Path, out: Path) -> list[Job]:
    """Every (setting x sweep value, style, prompt, seed) as a validated request and its output path."""
    jobs, labels = [], set()
    for setting in manifest.settings:
        base = {k: v for k, v in (setting.model_extra or {}).items()}
        keys = list(setting.sweep)
        combos = list(itertools.product(*(setting.sweep[k] for k in keys))) or [()]
        for combo in combos:
            label = setting.name or setting.method
            if combo:
                label += " " + " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
            if label in labels:
                raise InstantStyleError(
                    f"manifest: two settings are both called {label!r}; give them distinct names"
                )
            labels.add(label)
            for s_idx, style in enumerate(manifest.styles):
                image = (root / style.image) if not Path(style.image).is_absolute() else Path(style.image)
                load_image(image, what=f"manifest style image {style.image!r}")
                for p_idx, prompt in enumerate(manifest.prompts):
                    for seed in manifest.seeds:
                        params = {
                            **manifest.defaults,
                            **base,
                            **dict(zip(keys, combo, strict=True)),
                            "prompt": prompt,
                            "seed": seed,
                            "method": setting.method,
                            "num_images": 1,
                        }
                        method = methods_mod.get(setting.method)
                        if method.reference != "lora":
                            params["style"] = [str(image)]
                        if setting.content_subtraction:
                            if not style.content:
                                raise InstantStyleError(
                                    f"manifest: setting {label!r} subtracts content but style "
                                    f"{style.image!r} has no 'content'"
                                )
                            params["content_prompt"] = style.content
                        if method.reference == "image" and "reference_prompt" not in params:
                            params["reference_prompt"] = style.description or style.content
                        try:
                            req = make_request(
                                flag_style=False, **{k: v for k, v in params.items() if v is not None}
                            )
                        except InstantStyleError as exc:
                            raise InstantStyleError(f"manifest setting {label!r}: {exc}") from None
                        name = f"{s_idx:03d}-{_slug(Path(style.image).stem)}-p{p_idx}-s{seed}.png"
                        jobs.append(Job(label, req, image, out / "images" / _slug(label) / name, p_idx))
    return jobs


def _matches(path: Path, req: GenerateRequest) -> str | None:
    """``None`` if the file was generated with ``req``'s parameters, else the first differing field."""
    try:
        params = read_metadata(path)
    except (InstantStyleError, OSError, ValueError):
        return "parameters (the file carries none)"
    want = req.model_dump()
    owned = {
        f for m in methods_mod.METHODS.values() for f in m.options
    }  # read only by the methods listing them
    read = (set(IDENTITY) - owned) | set(methods_mod.METHODS[req.method].options)
    for key in IDENTITY:
        # None asks for the default resolved at generation time (the model's size, content scale 0.5)
        if key in read and key in params and want.get(key) is not None and params[key] != want[key]:
            return f"{key} ({params[key]!r}, the manifest now says {want.get(key)!r})"
    return None


def run_manifest(
    jobs: Sequence[Job],
    load_model: Callable[[], object],
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Generate the jobs whose files are missing (the model loads only if one is); reuse the rest."""
    from ..images import save_png

    missing = []
    for job in jobs:
        if job.out.exists():
            differs = _matches(job.out, job.request)
            if differs:
                raise InstantStyleError(
                    f"'{job.out}' exists but was generated with a different {differs}; "
                    "delete it or use another --out"
                )
        else:
            missing.append(job)
    counts = {"generated": 0, "reused": len(jobs) - len(missing)}
    if not missing:
        return counts
    model = load_model()
    bar = _bar(len(missing), "generating", progress)
    for job in missing:
        job.out.parent.mkdir(parents=True, exist_ok=True)
        image = model.generate(job.request)[0]
        save_png(image, job.out)
        counts["generated"] += 1
        bar.update(1)
    bar.close()
    log(f"eval: generated {counts['generated']} image(s), reused {counts['reused']}")
    return counts
