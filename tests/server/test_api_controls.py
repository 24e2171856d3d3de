"""The leakage controls over HTTP: composition / negative style images as uploads (never paths), same pixels
as the Python API, one-line 4xx errors for bad combinations."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from instantstyle.server.service import GenerationService, Limits

LIMITS = Limits(
    max_upload_bytes=64 * 1024,
    max_pixels=100 * 100,
    max_style_images=3,
    min_size=64,
    max_size=128,
    max_steps=10,
    max_wait_s=60,
)


@pytest.fixture(scope="module")
def client(tiny_model):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with (
        GenerationService(tiny_model, queue_size=2, limits=LIMITS, cpu_threads=1) as svc,
        TestClient(create_app(svc, ui=False), base_url="http://127.0.0.1") as c,
    ):
        yield c


def _post(client, params, files):
    return client.post("/v1/generate?wait=true", data={"params": json.dumps(params)}, files=files)


def test_composition_and_negative_uploads(client, tiny_model, style_images):
    red, blue, green = (style_images[k] for k in ("red", "blue", "green"))
    params = {
        "prompt": "a cat",
        "seed": 4,
        "steps": 2,
        "width": 64,
        "height": 64,
        "mode": "precise",
        "style_window": [0, 0.5],
        "negative_style_scale": 0.5,
    }
    files = [
        ("images", ("red.png", red.read_bytes(), "image/png")),
        ("composition", ("blue.png", blue.read_bytes(), "image/png")),
        ("negative_style", ("green.jpg", green.read_bytes(), "image/jpeg")),
    ]
    r = _post(client, params, files)
    assert r.status_code == 200, r.text
    result = r.json()["images"][0]
    meta = result["metadata"]
    assert meta["composition"].startswith("<image ") and meta["negative_style"].startswith("<image ")
    assert meta["style_window"] == [0.0, 0.5] and meta["mode"] == "precise"
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["png_base64"]))).convert("RGB"))
    api = tiny_model.generate(
        prompt="a cat",
        seed=4,
        steps=2,
        width=64,
        height=64,
        mode="precise",
        style_window=(0, 0.5),
        negative_style_scale=0.5,
        style=[str(red)],
        composition=str(blue),
        negative_style=str(green),
    )[0]
    diff = np.abs(np.asarray(api).astype(int) - got.astype(int)).max()
    assert diff <= 2, diff  # the service runs on one CPU thread: reductions round differently


@pytest.mark.parametrize(
    "params, message",
    [
        ({"composition": "/etc/passwd"}, "a request never names a file"),
        ({"negative_style": "x.png"}, "a request never names a file"),
        ({"style_window": [0.7, 0.2]}, "START must be below END"),
        ({"layout_boost": 2.0}, "--layout-boost is for presets"),
    ],
)
def test_bad_control_requests_are_4xx(client, style_images, params, message):
    files = [("images", ("red.png", style_images["red"].read_bytes(), "image/png"))]
    r = _post(client, {"prompt": "a cat", "steps": 1, **params}, files)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and "\n" not in error["message"]
