"""What an output says about how it was made: its full parameters (``output_params``, the JSON
chunk ``images.attach_metadata`` writes) and the A1111 ``parameters`` text made from them.

Every generator (the InstantStyle tasks and each baseline method) records the same core: the
request, the seed and size actually used, the models, device, dtype, speed, memory mode and the
library versions; each adds what only it knows (active blocks, image hashes, ControlNets).

The ``parameters`` text follows the layout that AUTOMATIC1111's web UI writes and that its
"PNG Info" tab, Civitai, sd-parsers and ComfyUI readers parse: the prompt, an optional
``Negative prompt:`` line, then one line of ``Key: value`` pairs joined by ``", "``:

- ``Sampler`` and ``Schedule type`` carry A1111's names (``Euler a``, ``DPM++ 2M`` + ``Karras``);
- ``Seed`` is this image's seed: for our own pipelines image *i* of a batch is generated from
  ``seed + i`` (one generator per image, as A1111), so that seed alone reproduces it; methods that
  sample a whole batch from one generator write the call's seed with ``Batch size``/``Batch pos``;
- ``Denoising strength`` for img2img and inpainting; ``Model`` is the model's name (a Hub id, or
  a local folder's/file's name, never the local path); ``Model hash`` is A1111's short hash
  (the first 10 hex digits of the file's SHA-256) where the model is one checkpoint file;
- only what the method used is claimed (no ``IP-Adapter`` on a B-LoRA image), and every setting
  that changes the pixels is there (ControlNets, the fast path's approximations such as fp8,
  VAE tiling, dtype).

Values that contain a separator (``,``, ``:``, a newline or a quote) are written as JSON strings,
as A1111 does; inside them ``,`` and ``:`` are written as the JSON escapes ``\\u002c`` and
``\\u003a``, so readers that split on separators without honouring quotes (sd-parsers) still see
one value, and readers that unquote (A1111) get the exact text back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import atomic_write_text, cache_dir


def versions() -> dict[str, str]:
    """The versions that decide the pixels: this toolkit, diffusers and torch."""
    import diffusers
    import torch

    from . import __version__

    return {"instantstyle": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}


def output_params(request: dict, *, seed: int, width: int, height: int, model: dict, **extra) -> dict:
    """The parameters every output carries: the request (``model_dump()``), what was used, ``extra``.

    ``model`` is the loaded model's side (``InstantStyle.provenance()``: model ids, device, dtype,
    speed, memory); ``extra`` holds what the generator alone knows, recorded before the model's.
    """
    return {
        **request,
        "seed": seed,
        "width": width,
        "height": height,
        **extra,
        **model,
        "versions": versions(),
    }


# our sampler name -> (A1111 sampler, A1111 schedule type or None)
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler": ("Euler", None),
    "euler-a": ("Euler a", None),
    "ddim": ("DDIM", None),
    "dpm++2m": ("DPM++ 2M", None),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "unipc": ("UniPC", None),
    "heun": ("Heun", None),
    "lms": ("LMS", None),
    "lcm": ("LCM", None),
    "tcd": ("TCD", None),
}
IP_ADAPTER_METHODS = ("instantstyle", "ip-adapter")  # methods that run the IP-Adapter


def quote(value) -> str:
    """A1111's quoting of a value that holds a separator (see the module docstring)."""
    text = str(value)
    if not any(c in text for c in ',:\n"'):
        return text
    return json.dumps(text, ensure_ascii=False).replace(",", "\\u002c").replace(":", "\\u003a")


def model_name(spec: str | None) -> str | None:
    """A Hub id as is; a local path by its last component (A1111 shows checkpoint names, not paths)."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_absolute() or path.exists():
        return path.stem if path.is_file() else path.name
    return spec


def short_hash(path: str | os.PathLike) -> str:
    """A1111's ``Model hash``: the first 10 hex digits of the file's SHA-256 (cached by size and mtime)."""

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = Path(cache_dir()) / "model_hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()[:10]
    known[key] = value
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(known))
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return value


def model_hash(spec: str | None) -> str | None:
    """``short_hash`` for a model that is one local checkpoint file, else None (folders, Hub ids)."""
    if not spec:
        return None
    path = Path(spec)
    return short_hash(path) if path.is_file() else None


def a1111_parameters(params: dict) -> str:
    """The ``parameters`` text for one image's parameters (the JSON chunk's dict)."""
    lines = [params.get("prompt", "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    method = params.get("method", "instantstyle")
    sampler, schedule = A1111_SAMPLERS.get(params.get("scheduler"), (params.get("scheduler"), None))
    batch = params.get("num_images") or 1
    own_seed = params.get("image_seed")
    fields: dict = {
        "Steps": params.get("steps"),
        "Sampler": sampler,
        "Schedule type": schedule,
        "Timestep spacing": params.get("timestep_spacing"),  # given; else the scheduler's own
        "Few-step preset": params.get("sampling"),
        "CFG scale": params.get("guidance"),
        "Seed": own_seed if own_seed is not None else params.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}" if params.get("width") else None,
        "Model hash": params.get("base_hash") or model_hash(params.get("base")),
        "Model": model_name(params.get("base")),
        "Denoising strength": params.get("strength")
        if params.get("task") in ("img2img", "inpaint")
        else None,
        "Batch size": batch if batch > 1 and own_seed is None else None,
        "Batch pos": params.get("index") if batch > 1 and own_seed is None else None,
    }
    for i, cn in enumerate(params.get("controlnets") or []):
        fields[f"ControlNet {i}"] = (
            f"Module: {cn.get('kind')}, Model: {model_name(cn.get('model'))}, Weight: {cn.get('scale')}"
        )
    if method in IP_ADAPTER_METHODS:
        fields["IP-Adapter"] = model_name(params.get("adapter"))
        fields["IP-Adapter image encoder"] = model_name(params.get("image_encoder"))
    fields["InstantStyle method"] = method
    if method in IP_ADAPTER_METHODS:
        fields.update(
            {
                "InstantStyle mode": params.get("mode") if not params.get("blocks") else None,
                "InstantStyle scale": params.get("scale"),
                "InstantStyle blocks": params.get("blocks"),
                "Content prompt": params.get("content_prompt"),
                "Content scale": params.get("content_scale"),
            }
        )
    if params.get("task") == "plus":
        fields["Content IP scale"] = params.get("content_ip_scale")
    if method == "b-lora":
        fields["B-LoRA"] = model_name(params.get("b_lora"))
        fields["B-LoRA scale"] = params.get("b_lora_scale")
    if method in ("style-aligned", "visual-style-prompting"):
        fields["Reference prompt"] = params.get("reference_prompt")
    approx = dict(params.get("approximations") or {})  # fast.FastOptions.approximations()
    if (params.get("speed") or {}).get("fp8"):
        approx.setdefault("fp8", True)
    if approx:
        fields["InstantStyle approximations"] = ", ".join(f"{k}={v}" for k, v in approx.items())
    if params.get("memory") in ("low", "lowest"):
        fields["VAE tiling"] = "512 px"
    fields["Dtype"] = params.get("dtype")
    fields["Version"] = f"instantstyle {(params.get('versions') or {}).get('instantstyle', '')}".strip()
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v not in (None, "", [])))
    return "\n".join(lines)
