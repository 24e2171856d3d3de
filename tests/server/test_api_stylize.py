"""The HTTP API's stylize modes and baselines on the tiny model: ControlNet, img2img, inpainting, Plus,
regional styles, a baseline method. Each answer's metadata matches the request and its pixels equal
the library's (``InstantStyle.generate`` with the same PIL inputs and seed); bad inputs get a 4xx and
the server stays healthy. Images travel as uploads; a request never names a file or a model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from instantstyle.config import GenerateRequest
from instantstyle.images import METADATA_KEY, image_hash
from instantstyle.server.service import GenerationService, Limits
from instantstyle.server.uploads import UPLOAD

STEPS = 2
LIMITS = Limits(
    max_upload_bytes=64 * 1024,
    max_pixels=100 * 100,
    max_prompt_length=200,
    max_style_images=3,
    max_num_images=2,
    min_size=64,
    max_size=128,
    max_steps=10,
    max_wait_s=60,
)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _content() -> Image.Image:
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:48, 12:40] = (240, 200, 40)
    a[30:60, 36:60] = (40, 90, 220)
    return Image.fromarray(a)


def _half(left: bool, size=(64, 64)) -> Image.Image:
    m = np.zeros((size[1], size[0]), np.uint8)
    m[:, : size[0] // 2] = 255
    return Image.fromarray(m if left else 255 - m)


CONTENT, LEFT, RIGHT = _content(), _half(True), _half(False)


@pytest.fixture(scope="module")
def service(tiny_model, tiny_paths):
    # the operator allows the tiny ControlNets by name (the model is loaded from files, so the
    # built-in canny/tile would point at the Hub's SDXL ControlNets)
    controlnets = {
        "tinycanny": str(tiny_paths["controlnet_canny"]),
        "tinytile": str(tiny_paths["controlnet_tile"]),
    }
    with GenerationService(
        tiny_model, queue_size=4, limits=LIMITS, cpu_threads=1, controlnets=controlnets
    ) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, ui=False), base_url="http://127.0.0.1") as c:
        yield c


def _post(client, params, files):
    data = {"params": params if isinstance(params, str) else json.dumps(params)}
    return client.post("/v1/generate?wait=true", data=data, files=files)


def _files(red_png, **uploads):
    out = [("images", ("red.png", red_png, "image/png"))]
    for field, images in uploads.items():
        for i, im in enumerate(images if isinstance(images, list) else [images]):
            out.append((field, (f"{field}{i}.png", im if isinstance(im, bytes) else _png(im), "image/png")))
    return out


def _library(tiny_model, request: dict, style_images, **inputs) -> list[Image.Image]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service's worker: CPU float sums depend on the thread count
    try:
        return tiny_model.generate(GenerateRequest(**request), style_images=style_images, **inputs)
    finally:
        torch.set_num_threads(threads)


def _check(client, tiny_model, red_png, params, uploads: dict, inputs: dict, style_images=None, expect=None):
    """POST, then: metadata = request, pixels = the library's with the same PIL inputs."""
    r = _post(client, {"steps": STEPS, "seed": 11, **params}, _files(red_png, **uploads))
    assert r.status_code == 200, r.text
    body = r.json()
    (entry,) = body["images"]
    image = Image.open(io.BytesIO(base64.b64decode(entry["png_base64"])))
    meta = json.loads(image.info[METADATA_KEY])
    assert meta == entry["metadata"]
    for key, value in {"steps": STEPS, "seed": 11, **params, **(expect or {})}.items():
        assert meta[key] == value, key
    red = Image.open(io.BytesIO(red_png))
    (ref,) = _library(tiny_model, body["request"], [red, *(style_images or [])], **inputs)
    assert json.loads(ref.info[METADATA_KEY])["style_image_sha256"] == meta["style_image_sha256"]
    assert np.array_equal(np.asarray(ref.convert("RGB")), np.asarray(image.convert("RGB")))
    return np.asarray(image.convert("RGB"), dtype=int), meta


def test_controlnet_derived_and_uploaded_control_images(client, tiny_model, red_png):
    from instantstyle.control import canny

    params = {"prompt": "a house", "control": ["canny=tinycanny"], "control_scale": [0.8]}
    derived, meta = _check(
        client,
        tiny_model,
        red_png,
        params,
        {"content": CONTENT},
        {"content_image": CONTENT},
        expect={"task": "controlnet", "content": UPLOAD},
    )
    assert meta["content_sha256"] == image_hash(CONTENT)
    assert meta["controlnets"] == [{"kind": "canny", "model": "tinycanny", "scale": 0.8}]
    # a ControlNet the operator allowed by name, fed an uploaded control image (no content image)
    edges = canny(CONTENT)
    params = {"prompt": "a house", "control": ["tinycanny"], "control_scale": [0.8]}
    given, meta = _check(
        client,
        tiny_model,
        red_png,
        params,
        {"control_images": edges},
        {"control_images": [edges]},
        expect={"control_image": [UPLOAD]},
    )
    assert meta["control_image_sha256"] == [image_hash(edges)]
    assert np.array_equal(given, derived)  # the same edges through the same ControlNet
    # null entries of control_image derive from the content image; "<upload>" ones take the uploads
    params = {
        "prompt": "a house",
        "control": ["canny=tinycanny", "tinycanny"],
        "control_image": [None, UPLOAD],
    }
    _check(
        client,
        tiny_model,
        red_png,
        params,
        {"content": CONTENT, "control_images": edges},
        {"content_image": CONTENT, "control_images": [None, edges]},
    )


def test_img2img(client, tiny_model, red_png):
    image, meta = _check(
        client,
        tiny_model,
        red_png,
        {"prompt": "a house", "strength": 0.6},
        {"content": CONTENT},
        {"content_image": CONTENT},
        expect={"task": "img2img"},
    )
    assert meta["content_sha256"] == image_hash(CONTENT)


def test_inpaint_with_mask(client, tiny_model, red_png):
    image, meta = _check(
        client,
        tiny_model,
        red_png,
        {"prompt": "a house", "task": "inpaint"},
        {"content": CONTENT, "mask": LEFT},
        {"content_image": CONTENT, "mask_image": LEFT},
        expect={"mask": UPLOAD, "strength": 0.99},
    )
    assert meta["mask_sha256"] == image_hash(LEFT)


def test_plus(client, tiny_model, red_png):
    params = {"prompt": "a house", "task": "plus", "control": ["tile=tinytile"], "steps": 2}
    _, meta = _check(
        client,
        tiny_model,
        red_png,
        params,
        {"content": CONTENT},
        {"content_image": CONTENT},
        expect={"scheduler": "ddim", "content_ip_scale": 0.2},
    )
    assert meta["controlnets"] == [{"kind": "tile", "model": "tinytile", "scale": 0.4}]


def test_regional_style_masks(client, tiny_model, red_png, style_images):
    blue = Image.open(style_images["blue"])
    files_blue = [("images", ("blue.png", style_images["blue"].read_bytes(), "image/png"))]
    r = _post(
        client,
        {"prompt": "two halves", "seed": 11, "steps": STEPS},
        _files(red_png, style_masks=[LEFT, RIGHT]) + files_blue,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"])))
    meta = json.loads(image.info[METADATA_KEY])
    assert meta["style_masks"] == [UPLOAD, UPLOAD]
    assert meta["style_mask_sha256"] == [image_hash(LEFT), image_hash(RIGHT)]
    (ref,) = _library(
        tiny_model, body["request"], [Image.open(io.BytesIO(red_png)), blue], style_mask_images=[LEFT, RIGHT]
    )
    assert np.array_equal(np.asarray(ref.convert("RGB")), np.asarray(image.convert("RGB")))


def test_baseline_method(client, tiny_model, red_png):
    params = {"prompt": "a house", "method": "visual-style-prompting", "reference_prompt": "a red square"}
    _check(client, tiny_model, red_png, params, {}, {})


def _noise_png() -> bytes:  # ~120 kB: over the 64 kB upload limit
    return _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)))


def _long_png() -> bytes:  # 40x200: at short side 64 its long side would be 320, over --max-size 128
    return _png(Image.new("RGB", (40, 200), (200, 10, 10)))


BAD = {
    # name: (params, uploads, status, words in the message)
    "mask of the wrong size": (
        {"task": "inpaint"},
        {"content": CONTENT, "mask": _half(True, (32, 32))},
        400,
        "must have the content image's size",
    ),
    "RGB mask": ({"task": "inpaint"}, {"content": CONTENT, "mask": LEFT.convert("RGB")}, 400, "3 channels"),
    "strength 0": ({"strength": 0}, {"content": CONTENT}, 400, "strength"),
    "control is a path": ({"control": ["/etc/passwd"]}, {"content": CONTENT}, 400, "not allowed"),
    "control is a relative path": ({"control": ["../x"]}, {"content": CONTENT}, 400, "not allowed"),
    "control kind=path": ({"control": ["canny=/etc/passwd"]}, {"content": CONTENT}, 400, "not allowed"),
    "control hub id": (
        {"control": ["diffusers/controlnet-depth-sdxl-1.0"]},
        {"content": CONTENT},
        400,
        "not allowed",
    ),
    "content is a path": ({"content": "/etc/passwd", "strength": 0.5}, {}, 400, "never names a file"),
    "mask is a path": (
        {"task": "inpaint", "mask": "../mask.png"},
        {"content": CONTENT},
        400,
        "never names a file",
    ),
    "control_image is a path": (
        {"control": ["tinycanny"], "control_image": ["/etc/x.png"]},
        {},
        400,
        "never names a file",
    ),
    "style_masks are paths": ({"style_masks": ["/etc/a.png"]}, {}, 400, "never names a file"),
    "upload label without a file": ({"content": UPLOAD, "strength": 0.5}, {}, 400, "no file 'content'"),
    "oversized content upload": (
        {"strength": 0.5},
        {"content": _noise_png()},
        413,
        "over the limit of 65536",
    ),
    "non-image content": ({"strength": 0.5}, {"content": b"hello"}, 400, "not an image"),
    "content without a task": ({}, {"content": CONTENT}, 400, "needs a way to use it"),
    "inpaint without a mask": ({"task": "inpaint"}, {"content": CONTENT}, 400, "needs --mask"),
    "style mask count": ({}, {"style_masks": [LEFT, RIGHT]}, 400, "2 style masks for 1 style references"),
    "custom ControlNet without its image": (
        {"control": ["tinycanny"]},
        {"content": CONTENT},
        400,
        "needs its --control-image",
    ),
    "content too elongated for the size range": (
        {"strength": 0.5},
        {"content": _long_png()},
        400,
        "outside the allowed range",
    ),
    "b-lora": ({"method": "b-lora", "b_lora": "/tmp/lora"}, {}, 400, "not served over HTTP"),
    "inversion steps over the limit": (
        {"task": "plus", "control": ["tile=tinytile"], "steps": 11, "inversion_steps": 11},
        {"content": CONTENT},
        400,
        "over the limit of 10",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_stylize_input_is_a_4xx_and_the_server_stays_healthy(client, red_png, name):
    params, uploads, status, words = BAD[name]
    r = _post(client, {"prompt": "x", "steps": STEPS, **params}, _files(red_png, **uploads))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and words in err["message"] and "\n" not in err["message"], err
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["workers_alive"] == 1
    assert health["controls"] == ["canny", "tile", "tinycanny", "tinytile"]


def test_operator_controlnets_are_checked_registered_and_forgotten(tiny_model, tiny_paths):
    from instantstyle import control
    from instantstyle.errors import InstantStyleError

    with pytest.raises(InstantStyleError, match="the name must be"):
        GenerationService(tiny_model, controlnets={"../up": str(tiny_paths["controlnet_canny"])})
    service = GenerationService(tiny_model, controlnets={"mine": str(tiny_paths["controlnet_canny"])})
    assert "mine" in control._LOADED[tiny_model] and service.control_choices() == ["canny", "tile", "mine"]
    service.close()
    assert "mine" not in control._LOADED[tiny_model]  # the shared model is left as found


def test_library_refuses_an_in_memory_image_the_request_does_not_use(tiny_model, red_png):
    from instantstyle.errors import InstantStyleError

    red = Image.open(io.BytesIO(red_png))
    with pytest.raises(
        InstantStyleError, match="in-memory content image was given but the request's content is empty"
    ):
        tiny_model.generate(prompt="x", steps=1, style_images=[red], content_image=CONTENT)
    with pytest.raises(InstantStyleError, match="in-memory style_masks image"):
        tiny_model.generate(prompt="x", steps=1, style_images=[red], style_mask_images=[LEFT])
