"""One declaration per field: every ``GenerateRequest`` field has a CLI flag and a web-UI widget made
from the schema (same default, range and choices), or is marked as not for that front end with a
reason; and a cross-field rule (mode with blocks) is refused the same way by the CLI, the Python
API and the HTTP API."""

from __future__ import annotations

import argparse
import json

import pytest
from pydantic import Field, create_model

from instantstyle import schema_flags
from instantstyle.cli import build_parser, main
from instantstyle.config import GenerateRequest, default_for
from instantstyle.errors import InstantStyleError

MODE_AND_BLOCKS = "give --mode or --blocks, not both (--blocks replaces the preset)"


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def cli_gaps(model, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong between ``model``'s fields and ``parser``'s flags (empty: nothing)."""
    actions = {a.dest: a for a in parser._actions}
    gaps = []
    for name, field in model.model_fields.items():
        m = schema_flags.meta(field)
        if "not_in_cli" in m:
            gaps += [] if m["not_in_cli"].strip() else [f"{name}: not_in_cli without a reason"]
            continue
        action = actions.get(name)
        if action is None:
            gaps.append(f"{name}: no flag")
            continue
        if schema_flags.flag_name(name, field) not in action.option_strings:
            gaps.append(
                f"{name}: flag {action.option_strings}, schema says {schema_flags.flag_name(name, field)}"
            )
        if action.default not in (None, []):  # unset: the schema's (task/method dependent) default applies
            gaps.append(f"{name}: the flag's own default {action.default!r} would override the schema's")
        want = schema_flags.choices(field)
        if want is not None and not set(want) <= set(action.choices or ()):
            gaps.append(f"{name}: choices {action.choices} for {want}")
        rng = schema_flags.range_text(field)
        if rng and rng not in (action.help or ""):
            gaps.append(f"{name}: help does not give the range {rng}")
    return gaps


def ui_gaps(model, widgets: dict, limits: dict) -> list[str]:
    gaps = []
    for name, field in model.model_fields.items():
        m = schema_flags.meta(field)
        if "not_in_ui" in m:
            gaps += [] if m["not_in_ui"].strip() else [f"{name}: not_in_ui without a reason"]
            continue
        if name not in widgets:
            gaps.append(f"{name}: no widget")
            continue
        kind, kw = widgets[name]
        lo, hi = schema_flags.bounds(field)
        if name in limits and kind in ("slider", "number"):
            lo, hi = max(lo, limits[name][0]), min(hi, limits[name][1])
        if kind in ("slider", "number") and (kw.get("minimum"), kw.get("maximum")) != (lo, hi):
            gaps.append(f"{name}: widget range {kw.get('minimum')}..{kw.get('maximum')}, schema {lo}..{hi}")
        if kind not in ("image", "mask", "images", "masks", "blocks", "style"):
            want = schema_flags.to_widget(name, field, schema_flags.default(field))
            if kind == "slider":
                want = min(max(want, lo), hi)  # a server limit below the schema's default
            if kw.get("value") != want and not (kw.get("value") in (None, "") and want in (None, "")):
                gaps.append(
                    f"{name}: widget default {kw.get('value')!r}, schema {schema_flags.default(field)!r}"
                )
        want = schema_flags.choices(field)
        if want is not None and list(kw.get("choices", [])) != list(want):
            gaps.append(f"{name}: widget choices {kw.get('choices')} for {want}")
    return gaps


# ---------------------------------------------------------------------- the walk


def test_every_field_has_a_cli_flag_with_the_schemas_default_range_and_choices():
    assert cli_gaps(GenerateRequest, _subparser("generate")) == []
    args = build_parser().parse_args(["generate", "--prompt", "x", "--style", "a.png", "--out", "o.png"])
    from instantstyle.cli.generate import request_from_args

    req = request_from_args(args)  # flags not given: the schema's defaults
    for name in (
        "steps",
        "scale",
        "mode",
        "scheduler",
        "canny_low",
        "style_window",
        "num_images",
        "swap_end",
    ):
        assert getattr(req, name) == default_for(name), name
    assert req.guidance == default_for("guidance") == 5.0


def test_every_field_has_a_ui_widget_with_the_schemas_default_range_and_choices():
    pytest.importorskip("gradio", reason="the web UI needs the 'serve' extra")
    from instantstyle.server.service import Limits
    from instantstyle.server.ui_form import field_widgets, server_bounds

    limits = Limits()
    widgets = field_widgets(limits, control_choices=["canny", "tile"], methods=["instantstyle"])
    assert ui_gaps(GenerateRequest, widgets, server_bounds(limits)) == []
    # the wart once fixed here: the UI sent guidance 5 always, so a method's own default never applied
    assert widgets["guidance"][1]["value"] is None
    assert widgets["scale"] == ("slider", widgets["scale"][1]) and widgets["scale"][1]["maximum"] == 10.0


def test_the_walks_find_a_field_without_a_flag_or_a_widget():
    extended = create_model("Extended", __base__=GenerateRequest, sharpness=(float, Field(0.5, ge=0, le=1)))
    assert cli_gaps(extended, _subparser("generate")) == ["sharpness: no flag"]
    assert "sharpness: no widget" in ui_gaps(extended, {}, {})
    hidden = create_model(
        "Hidden",
        __base__=GenerateRequest,
        sharpness=(
            float,
            Field(0.5, json_schema_extra=schema_flags.frontend(not_in_cli="", not_in_ui="internal")),
        ),
    )
    assert cli_gaps(hidden, _subparser("generate")) == ["sharpness: not_in_cli without a reason"]
    # a flag that drifted from the schema: another range, its own default
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default=25, help="Denoising steps. Range [1, 100].")
    narrow = create_model("Narrow", steps=(int, Field(30, ge=1, le=500)))
    assert cli_gaps(narrow, parser) == [
        "steps: the flag's own default 25 would override the schema's",
        "steps: help does not give the range [1, 500]",
    ]


def test_shared_builder_makes_the_training_flags_too():
    from instantstyle.training.config import TrainConfig

    parser = _subparser("train-adapter")
    actions = {a.dest: a for a in parser._actions}
    for name, field in TrainConfig.model_fields.items():
        assert actions[name].option_strings[0] == schema_flags.flag_name(name, field)
        assert (
            actions[name].default is argparse.SUPPRESS
        )  # --config FILE values are overridden only by flags given
    assert actions["mixed_precision"].choices == ("no", "fp16", "bf16")


# ---------------------------------------------------------------------- one rule, every front end


def test_mode_with_blocks_is_refused_by_the_schema_for_every_front_end(capsys):
    with pytest.raises(InstantStyleError) as python:
        from instantstyle.config import make_request

        make_request(flag_style=False, prompt="a cat", mode="style", blocks="up_blocks.0.attentions.1=1")
    assert MODE_AND_BLOCKS in str(python.value)
    code = main(
        [
            "generate",
            "--prompt",
            "a cat",
            "--style",
            "a.png",
            "--mode",
            "style",
            "--blocks",
            "up_blocks.0.attentions.1=1",
            "--out",
            "o.png",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err == f"instantstyle: error: {python.value}\n"
    # blocks alone replace the default mode, as before
    assert GenerateRequest(prompt="a cat", blocks="up_blocks.0.attentions.1=1").blocks


def test_mode_with_blocks_python_and_http(tiny_model):
    pytest.importorskip("fastapi", reason="the HTTP API needs the 'serve' extra")
    from fastapi.testclient import TestClient
    from PIL import Image

    from instantstyle.server.http_api import create_app
    from instantstyle.server.service import GenerationService

    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    with pytest.raises(InstantStyleError) as python:
        tiny_model.generate(
            prompt="a cat", mode="style", blocks="up_blocks.0.attentions.1=1", style_images=[grey]
        )
    assert MODE_AND_BLOCKS in str(python.value)
    import io

    png = io.BytesIO()
    grey.save(png, format="PNG")
    params = {"prompt": "a cat", "mode": "style", "blocks": "up_blocks.0.attentions.1=1"}
    with (
        GenerationService(tiny_model, queue_size=1) as svc,
        TestClient(create_app(svc, ui=False), base_url="http://127.0.0.1") as client,
    ):
        r = client.post(
            "/v1/generate?wait=true",
            data={"params": json.dumps(params)},
            files=[("images", ("grey.png", png.getvalue(), "image/png"))],
        )
    assert 400 <= r.status_code < 500
    body = r.json()
    assert set(body) == {"error"} and MODE_AND_BLOCKS in body["error"]["message"]
    assert body["error"]["message"].endswith(str(python.value).removeprefix("request: "))


def test_ui_form_round_trip_and_task_defaults(tiny_model):
    gr = pytest.importorskip("gradio", reason="the web UI needs the 'serve' extra")
    from instantstyle.server.service import GenerationService
    from instantstyle.server.ui_form import (
        TASK_FIELDS,
        Form,
        field_widgets,
        form_values,
        request_params,
        task_changed,
    )

    with GenerationService(tiny_model, queue_size=1) as svc, gr.Blocks():
        specs = field_widgets(svc.limits, control_choices=svc.control_choices(), methods=["instantstyle"])
        form = Form(gr, tiny_model, specs, None)
    defaults = [c.value for c in form.inputs]
    _, saved, values, sliders = form.split(defaults)
    params = request_params(tiny_model, saved, {**values, "prompt": "a cat"}, sliders)
    # nothing the user left alone is sent: the schema's defaults (and the method's guidance) apply
    assert "guidance" not in params and "mode" in params and "blocks" not in params
    req = GenerateRequest(**params)
    assert req.guidance == 5.0 and req.task == "txt2img"
    custom = request_params(tiny_model, [], {**values, "prompt": "a cat", "blocks": True}, sliders)
    assert "mode" not in custom and custom["blocks"].startswith(tiny_model.modules[0].name)
    # an image's parameters come back into the same widgets
    item = {"params": {**req.model_dump(), "seed": 7, "guidance": 10.0}, "inputs": {}}
    back = form_values(tiny_model, item)
    _, _, again, _ = form.split(back)
    assert again["seed"] == 7 and again["guidance"] == 10.0 and again["style_window"] == "0:1"
    # picking Plus shows its defaults; leaving it puts the plain ones back
    plus = task_changed("plus", *[values[n] for n in TASK_FIELDS])
    assert dict(zip(TASK_FIELDS, plus, strict=True))["steps"] == 50
    assert dict(zip(TASK_FIELDS, task_changed("img2img", *plus), strict=True))["steps"] == 30
