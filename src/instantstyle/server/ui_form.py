"""The web UI's form, made from the request schema: one widget per ``GenerateRequest`` field
(``schema_flags.widget``: kind, range, default, choices and help from the schema, narrowed by the
server's limits), placed by ``LAYOUT``; and the one mapping between widget values and request
parameters, both ways (``request_params`` / ``form_values``). No Gradio import here: ``gr`` is passed in.
"""

from __future__ import annotations

from ..blocks import active_modules, parse_spec, preset_spec, resolve_branches
from ..config import TASKS, GenerateRequest, default_for
from ..schema_flags import default, from_widget, meta, to_widget, widget

# Where each request field's widget goes: (accordion title or None, open, elem_id, fields). Every
# field of GenerateRequest is placed here or marked ``not_in_ui`` in the schema (a test checks it);
# the widgets themselves (kind, range, default, choices, help) come from the schema.
LAYOUT = [
    (None, True, None, ["style_weights", "style_combine", "prompt", "negative_prompt", "mode", "scale"]),
    ("Per-block scales", False, "blocks-accordion", ["blocks"]),
    ("Content subtraction", False, None, ["content_prompt", "content_scale"]),
    (
        "Leakage controls (precise, composition image, negative image, step window)",
        False,
        "leakage-accordion",
        [
            "layout_boost",
            "composition",
            "negative_style",
            "composition_scale",
            "negative_style_scale",
            "style_window",
        ],
    ),
    (
        "Content image (ControlNet, img2img, inpainting, InstantStyle-Plus)",
        False,
        "content-accordion",
        [
            "content",
            "mask",
            "task",
            "control",
            "control_image",
            "control_scale",
            "strength",
            "canny_low",
            "canny_high",
            "inpaint_style",
        ],
    ),
    (
        "InstantStyle-Plus",
        False,
        "plus-accordion",
        [
            "content_ip_scale",
            "inversion_steps",
            "inversion",
            "renoise_steps",
            "noise_regularization",
            "inversion_prompt",
        ],
    ),
    ("Regional styles", False, None, ["style_masks"]),
    ("LoRAs (offered by the server: serve --lora-dir)", False, "loras-accordion", ["loras"]),
    (
        "Method",
        False,
        "method-accordion",
        [
            "method",
            "reference_prompt",
            "attention_layers",
            "share_group_norm",
            "shared_score_shift",
            "inversion_offset",
            "style_description",
            "swap_start",
            "swap_end",
            "color_calibration",
        ],
    ),
    ("Sampling", True, None, ["seed", "steps", "guidance", "width", "height", "num_images", "scheduler"]),
    ("Few-step models", False, "few-step-accordion", ["sampling", "timestep_spacing", "timesteps", "eta"]),
]
# Fields a task brings defaults for (config.task_defaults): picking the task sets their widgets.
TASK_FIELDS = ("scale", "steps", "scheduler", "control", "negative_prompt")
# Fields a few-step preset fills (schedulers.PRESETS): picking the preset sets their widgets.
PRESET_FIELDS = ("scheduler", "steps", "guidance", "timestep_spacing", "timesteps", "eta")


def layout() -> list:
    """``LAYOUT``, plus an "Other settings" section for any field placed nowhere (a new field gets
    its widget from the schema without an edit here)."""
    placed = {n for *_, names in LAYOUT for n in names} | {"style"}
    rest = [
        n for n, f in GenerateRequest.model_fields.items() if n not in placed and "not_in_ui" not in meta(f)
    ]
    return LAYOUT + ([("Other settings", False, "other-accordion", rest)] if rest else [])


def server_bounds(limits) -> dict:
    """The server's limits as (lo, hi) per field: they narrow the schema's ranges."""
    size = (limits.min_size, limits.max_size)
    text = (0, limits.max_prompt_length)
    return {
        "steps": (1, limits.max_steps),
        "width": size,
        "height": size,
        "num_images": (1, limits.max_num_images),
        **{
            n: text
            for n in (
                "prompt",
                "negative_prompt",
                "content_prompt",
                "reference_prompt",
                "inversion_prompt",
                "style_description",
            )
        },
    }


def field_widgets(
    limits, *, control_choices: list[str], methods: list[str], native: int = 1024, lora_names=()
) -> dict:
    """(kind, arguments) of every request field's widget, from the schema (``schema_flags.widget``)
    narrowed by the server's ``limits``; ``style`` and ``blocks`` are the two composite widgets."""
    from ..methods import METHODS

    bounds = server_bounds(limits)
    out = {}
    for _, _, _, names in layout():
        for name in names:
            if name == "blocks":
                out[name] = (
                    "blocks",
                    {"label": "Use these per-block scales (replaces the mode)", "value": False},
                )
                continue
            kind, kw = widget(name, GenerateRequest.model_fields[name], limits=bounds)
            out[name] = (kind, kw)
    out["method"] = (
        "dropdown",
        {
            **out["method"][1],
            "choices": methods,
            "value": "instantstyle",
            "info": "; ".join(f"{m}: {METHODS[m].summary}" for m in methods),
        },
    )
    out["control"] = ("checkboxgroup", {**out["control"][1], "choices": control_choices, "value": []})
    # The server's named LoRAs as a multi-select (NAME, or NAME:SCALE typed in); none offered: hidden.
    out["loras"] = (
        "dropdown",
        {
            **{k: v for k, v in out["loras"][1].items() if k in ("label", "info", "elem_id")},
            "choices": list(lora_names),
            "value": [],
            "multiselect": True,
            "allow_custom_value": True,
            "visible": bool(lora_names),
        },
    )
    for name in ("width", "height"):
        out[name][1]["label"] += f" (empty: the model's, {native})"
    out["guidance"][1]["label"] += " (empty: the method's default)"
    out["style"] = ("style", {})
    return out


def _component(gr, kind: str, kw: dict):
    """One Gradio component of ``kind`` (see ``schema_flags.widget``)."""
    if kind in ("image", "mask", "images", "masks"):
        kw = {k: v for k, v in kw.items() if k != "info"}  # uploads take no help text
    if kind in ("image", "mask"):
        return gr.Image(
            type="filepath",
            sources=["upload"],
            height=160,
            **({"image_mode": "L"} if kind == "mask" else {}),
            **kw,
        )
    if kind in ("images", "masks"):
        return gr.File(file_count="multiple", file_types=["image"], **kw)
    if kind == "number":  # "empty" must mean "not given": Gradio's number box sends 0 for it
        lo, hi = kw.get("minimum"), kw.get("maximum")
        rng = f" in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else ""
        return gr.Textbox(
            value="" if kw["value"] is None else str(kw["value"]),
            max_lines=1,
            placeholder=f"{kw['placeholder']} (or a number{rng})",
            **{k: v for k, v in kw.items() if k in ("label", "info", "elem_id")},
        )
    make = {
        "slider": gr.Slider,
        "dropdown": gr.Dropdown,
        "radio": gr.Radio,
        "checkbox": gr.Checkbox,
        "textbox": gr.Textbox,
        "checkboxgroup": gr.CheckboxGroup,
    }[kind]
    return make(**kw)


def block_slider_values(model, mode: str) -> list[float]:
    """Per-module values that reproduce a mode preset (1 where the preset puts the style, else 0)."""
    cond = resolve_branches(model.modules, preset_spec(mode), 1.0)["cond"]  # sliders: the conditional branch
    active = set(active_modules(model.modules, cond))
    return [1.0 if m.name in active else 0.0 for m in model.modules]


def _blocks_spec(model, values) -> str:
    return ",".join(f"{m.name}={float(v):g}" for m, v in zip(model.modules, values, strict=True))


class Form:
    """The form's components by name: one per request field (``fields``), the style uploads and
    saved styles, the per-block sliders; ``values`` in ``inputs`` order become a request."""

    def __init__(self, gr, model, specs: dict, styles_dir):
        from ..embeddings import list_styles

        self.model, self.fields, self.sliders = model, {}, []
        self.files = gr.File(
            label="Style images (drop one or several)",
            file_count="multiple",
            file_types=["image"],
            elem_id="style-files",
        )
        with gr.Row():
            self.saved = gr.Dropdown(
                choices=list_styles(styles_dir),
                multiselect=True,
                label="Saved styles",
                elem_id="saved-styles",
                scale=5,
            )
            self.refresh = gr.Button("Refresh", scale=1, size="sm")
        with gr.Accordion("Save the uploaded images as a style", open=False):
            with gr.Row():
                self.style_name = gr.Textbox(label="Style name", placeholder="watercolour", scale=4)
                self.save_btn = gr.Button("Save style", scale=1)
            self.save_status = gr.Markdown()
        for title, is_open, elem_id, names in layout():
            if title is None:
                self._place(gr, specs, names)
                continue
            shown = any(specs[n][1].get("visible", True) for n in names)  # e.g. LoRAs: none offered
            with gr.Accordion(
                title, open=is_open, visible=shown, **({"elem_id": elem_id} if elem_id else {})
            ):
                self._place(gr, specs, names)

    def _place(self, gr, specs: dict, names: list[str]) -> None:
        for name in names:
            kind, kw = specs[name]
            if kind == "blocks":
                self.fields[name] = gr.Checkbox(kw["value"], label=kw["label"], elem_id="custom-blocks")
                self.sliders = [
                    gr.Slider(0.0, 2.0, value=v, step=0.05, label=f"{m.name} ({m.level}, /{m.downsample})")
                    for m, v in zip(self.model.modules, block_slider_values(self.model, "style"), strict=True)
                ]
            else:
                self.fields[name] = _component(gr, kind, kw)

    @property
    def inputs(self) -> list:
        return [self.files, self.saved, *self.fields.values(), *self.sliders]

    def split(self, values: list) -> tuple[list, list, dict, list]:
        """Form values -> (style files, saved names, field values by name, block slider values)."""
        n = len(self.fields)
        return values[0], values[1], dict(zip(self.fields, values[2 : 2 + n], strict=True)), values[2 + n :]


IMAGE_FIELDS = {
    "content": "content image",
    "mask": "mask",
    "style_masks": "style mask",
    "control_image": "control image",
    "composition": "composition image",
    "negative_style": "negative style image",
}


def request_params(model, saved, v: dict, block_values: list) -> dict:
    """Field widget values -> request parameters (unset ones left out: the schema's defaults
    and rules apply, as for the CLI and the API). Image fields are filled by the caller."""
    fields = GenerateRequest.model_fields
    params = {
        name: from_widget(name, fields[name], value)
        for name, value in v.items()
        if name not in IMAGE_FIELDS and name != "blocks"
    }
    params["style"] = [f"@{n}" for n in (saved or [])]
    if v.get("blocks"):  # the per-block sliders replace the mode
        params["blocks"] = _blocks_spec(model, block_values)
        params.pop("mode", None)
    return {k: val for k, val in params.items() if val is not None and val != []}


def form_values(model, item: dict) -> list:
    """An image's parameters (and the uploads it was made from) back into the form, in ``inputs``
    order: the inverse of ``request_params``."""
    p, inputs = item["params"], item.get("inputs") or {}
    fields = GenerateRequest.model_fields
    values = []
    for _, _, _, names in layout():
        for name in names:
            if name in IMAGE_FIELDS:
                got = inputs.get(name) or []
                values.append(
                    (got or None) if name in ("style_masks", "control_image") else next(iter(got), None)
                )
            elif name == "blocks":
                values.append(bool(p.get("blocks")))
            else:
                values.append(to_widget(name, fields[name], p.get(name, default(fields[name]))))
    block_values = block_slider_values(model, p.get("mode") or "style")
    if p.get("blocks"):
        given = dict(parse_spec(p["blocks"]))
        block_values = [given.get(m.name, 0.0) for m in model.modules]
    saved_names = [s[1:] for s in p.get("style", []) if s.startswith("@")]
    return [item.get("style_files") or None, saved_names, *values, *block_values]


def preset_changed(name: str | None, *current) -> list:
    """Picking a few-step preset shows its values in the widgets it fills (``PRESET_FIELDS``: the
    form sends every widget's value, which would otherwise override the preset) and clears the
    ones it leaves unset (a spacing left over would not fit an LCM preset); no preset changes nothing."""
    from ..schedulers import PRESETS

    preset = PRESETS.get(name or "")
    if preset is None:
        return list(current)
    fields, values = GenerateRequest.model_fields, preset.fields()
    return [to_widget(n, fields[n], values.get(n)) for n in PRESET_FIELDS]


def task_changed(task: str | None, *current) -> list:
    """Picking a task sets the fields it brings defaults for (Plus: scale 1.2, 50 DDIM steps, ...);
    leaving it puts back the plain defaults where the task's are still shown."""
    fields = GenerateRequest.model_fields
    out = []
    for name, value in zip(TASK_FIELDS, current, strict=True):
        others = [to_widget(name, fields[name], default_for(name, task=t)) for t in TASKS]
        plain = to_widget(name, fields[name], default_for(name))
        mine = to_widget(name, fields[name], default_for(name, task=task))
        out.append(mine if (value in others or value == plain or value in (None, "", [])) else value)
    return out
