"""Pre-flight: check every input and every model piece before anything heavy loads.

Front ends call ``run(checks, needs)`` first thing. It

1. runs each local check (style / content / mask / control images, output paths: any callable
   that raises ``InstantStyleError``) and keeps every problem, not just the first;
2. resolves each needed model piece (``Need``) against the disk: a local path must hold the
   files its kind needs, a Hub reference must have them in the Hugging Face cache
   (``try_to_load_from_cache``: no network);
3. when a Hub piece is missing, decides once whether the Hub can be reached: ``HF_HUB_OFFLINE``,
   else one TCP connection to the endpoint's host with a short timeout (``hub_reachable``). If it
   cannot, the run stops with one message: every problem on its own line, the one
   ``instantstyle download ...`` command that fetches every missing piece, and the front end's
   try-out hint (the CLI's ``--base tiny``). No library has retried anything yet;
4. when every piece is cached but the Hub cannot be reached, switches huggingface_hub to offline
   mode for this process (``go_offline``), so the loaders read the cache at once instead of
   retrying ETag requests for a minute.

What a piece needs is declared per kind in ``KINDS`` (``register_kind`` adds one, e.g. a single-file
checkpoint or a LoRA), so new model sources add their row instead of editing this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import models
from .download import hub_reachable  # one TCP connection, cached (models asks it too)
from .errors import InstantStyleError, ModelNotFoundError

_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
_TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
)


@dataclass(frozen=True)
class Need:
    """A model piece a run needs: what it is (for messages), its reference, and its kind (``KINDS``)."""

    what: str
    ref: str
    kind: str


# A kind lists what must exist under the reference: groups of alternatives (any one file of a
# group will do), relative to the reference's folder (local dir, or the repo + subpath).
Requirement = list[tuple[str, ...]]


def _pipeline_files(
    present: Callable[[str], bool], towers: tuple[str, ...] = ("text_encoder", "text_encoder_2")
) -> Requirement:
    groups: Requirement = [("model_index.json",)]
    for folder in ("unet", "vae"):
        groups += [(f"{folder}/config.json",), tuple(f"{folder}/{w}" for w in _WEIGHTS)]
    for folder in towers:
        groups += [(f"{folder}/config.json",), tuple(f"{folder}/{w}" for w in _TRANSFORMERS_WEIGHTS)]
    return groups


KINDS: dict[str, Callable[[Callable[[str], bool]], Requirement]] = {
    "pipeline": _pipeline_files,  # a diffusers SDXL directory / repository
    "sd15-pipeline": lambda present: _pipeline_files(present, ("text_encoder",)),  # SD1.5: one text tower
    "unet-config": lambda present: [("unet/config.json",)],  # `instantstyle blocks` reads only this
    "file": lambda present: [("",)],  # the reference is the file itself
    "encoder": lambda present: [("config.json",), _TRANSFORMERS_WEIGHTS],  # a transformers model folder
    "controlnet": lambda present: [("config.json",), _WEIGHTS[::2]],  # loaded without a variant
}


def register_kind(name: str, requirement: Callable[[Callable[[str], bool]], Requirement]) -> None:
    """Declare what a new kind of model piece needs on disk (``requirement(present) -> groups``)."""
    KINDS[name] = requirement


# ---------------------------------------------------------------------- resolving pieces


def _present_fn(ref: str) -> tuple[Callable[[str], bool], bool]:
    """(does relative file exist?, is it a Hub reference?) for a reference."""
    src = models.parse_source(ref)
    if src.local is not None:
        root = src.local

        def local(rel: str) -> bool:
            return (root / rel).is_file() if rel else root.is_file()

        return local, False
    from .download import cached_file

    prefix = f"{src.subpath.rstrip('/')}/" if src.subpath else ""

    def cached(rel: str) -> bool:
        name = (prefix + rel) if rel else (src.subpath or "")
        return bool(name) and cached_file(src.repo_id, name) is not None

    return cached, True


def missing_files(need: Need) -> list[str]:
    """The requirement groups of ``need`` with no file on disk (empty: the piece is complete)."""
    if need.kind not in KINDS:
        raise InstantStyleError(f"unknown model piece kind {need.kind!r}; known: {', '.join(KINDS)}")
    present, _ = _present_fn(need.ref)
    return [" or ".join(g) or need.ref for g in KINDS[need.kind](present) if not any(present(f) for f in g)]


# ---------------------------------------------------------------------- the network, once


def go_offline() -> None:
    """Offline mode for the rest of this process: Hub lookups read the cache, nothing is retried."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


# ---------------------------------------------------------------------- the check


def needs_for_model(
    base: str,
    adapter: str | None,
    image_encoder: str | None,
    *,
    content_text_encoder: str | None = None,
    controls: Iterable[str] = (),
) -> list[Need]:
    """What ``InstantStyle.from_pretrained`` (and the ControlNets of a request) will load."""
    adapter = adapter or models.default_adapter(base)
    image_encoder = image_encoder or models.default_image_encoder(base, adapter)
    needs = [
        *needs_for_base(base),
        Need("IP-Adapter", adapter, "file"),
        Need("image encoder", image_encoder, "encoder"),
    ]
    if content_text_encoder:
        needs.append(Need("content text encoder", content_text_encoder, "encoder"))
    if controls:
        from . import control as control_mod

        for entry in controls:
            spec = control_mod.parse_control(entry, base=base)
            needs.append(Need("ControlNet", spec.model, "controlnet"))
    return needs


def needs_for_encoder(image_encoder: str) -> list[Need]:
    return [Need("image encoder", image_encoder, "encoder")]


def needs_for_base(base: str) -> list[Need]:
    """A diffusers folder / repository, or one checkpoint file (its configs are the loader's concern)."""
    from .single_file import is_single_file

    if is_single_file(base):
        return [Need("base model", base, "file")]
    return [Need("base model", base, "sd15-pipeline" if models.base_family(base) == "sd15" else "pipeline")]


def _safe(check: Callable[[], object], problems: list[str]) -> None:
    try:
        check()
    except InstantStyleError as exc:
        problems.append(str(exc))


def run(
    checks: Iterable[Callable[[], object]] = (),
    needs: Iterable[Need] = (),
    *,
    tryout: str | None = None,
) -> None:
    """Run every local check and resolve every piece; raise once with every problem (module docstring).

    ``tryout`` is the front end's hint for a run without weights (the CLI passes its ``--base tiny``
    flag); it is added when a model piece is missing.
    """
    problems: list[str] = []
    for check in checks:
        _safe(check, problems)
    hub_missing: list[Need] = []
    hub_used = False
    for need in needs:
        if models.is_tiny(need.ref):
            continue
        try:
            src = models.parse_source(need.ref)
            gaps = missing_files(need)
        except InstantStyleError as exc:
            problems.append(str(exc))
            continue
        if src.local is not None:
            if gaps:
                problems.append(_local_problem(need, src.local, gaps))
            continue
        hub_used = True
        if gaps:
            hub_missing.append(need)
    offline = False
    if hub_used and not models.offline() and not hub_reachable():
        go_offline()
        offline = True
    if hub_missing and models.offline():
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if not offline
            else f"the Hub ({_endpoint()}) cannot be reached from here"
        )
        for need in hub_missing:
            problems.append(f"{need.what} '{need.ref}' is not in the Hugging Face cache")
        from .download import command_for, feature_for_reference

        items = [feature_for_reference(n.ref) or n.ref for n in hub_missing]
        tail = [
            f"fetch {'them' if len(hub_missing) > 1 else 'it'} with: {command_for(items)} "
            f"({why}; run it where the Hub can be reached)"
        ]
        if tryout:
            tail.append(tryout)
        raise ModelNotFoundError(_format(problems, tail))
    if problems:
        raise InstantStyleError(_format(problems, []))


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _local_problem(need: Need, path: Path, gaps: list[str]) -> str:
    if not path.exists():
        return f"{need.what} '{need.ref}' does not exist; check the path"
    if need.kind == "file":
        return f"{need.what} '{need.ref}' is a directory, not a file; give the .safetensors/.bin file in it"
    return (
        f"{need.what} '{need.ref}' lacks {', '.join(gaps[:3])}{' ...' if len(gaps) > 3 else ''}; "
        "it is not a complete model folder"
    )


def _format(problems: list[str], tail: list[str]) -> str:
    if len(problems) == 1 and not tail:
        return problems[0]
    head = f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found before loading anything:"
    return "\n".join([head, *(f"  - {p}" for p in problems), *tail])


def check_outputs_are_not_inputs(
    outputs: Iterable[str | Path], inputs: dict[str, Iterable[str | None]], *, flags: bool = False
) -> None:
    """Refuse an output that is one of the run's own inputs (even where overwriting is allowed).

    ``inputs`` maps a label (a CLI flag with ``flags=True``, else a field name) to the paths it reads.
    """

    def key(p) -> Path:
        return Path(p).expanduser().resolve()

    sources = {key(p): label for label, paths in inputs.items() for p in paths if p}
    for out in outputs:
        label = sources.get(key(out))
        if label is not None:
            what = (
                f"--out '{out}' is also this run's {label}"
                if flags
                else f"output '{out}' is also the {label}"
            )
            raise InstantStyleError(f"{what}; writing it would destroy an input: choose another output name")
