"""The HTTP API on the tiny model: round trip (same pixels as the CLI), jobs, styles, bad input -> 4xx JSON."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image
from server_helpers import png_bytes

from instantstyle.images import METADATA_KEY
from instantstyle.server.service import GenerationService, Limits

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


@pytest.fixture(scope="module")
def service(tiny_model):
    # one torch thread per worker: tiny models run faster, and it shows results do not depend on it
    with GenerationService(tiny_model, queue_size=4, limits=LIMITS, cpu_threads=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, ui=False), base_url="http://127.0.0.1") as c:
        yield c


def _post(client, params: dict | str, files=None, wait=True, **kw):
    data = {"params": params if isinstance(params, str) else json.dumps(params)}
    return client.post("/v1/generate" + ("?wait=true" if wait else ""), data=data, files=files, **kw)


def _upload(data: bytes, name="red.png", mime="image/png"):
    return [("images", (name, data, mime))]


def _decode(entry) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(entry["png_base64"])))
    image.load()
    return image


def _healthy(client):
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["workers_alive"] == 1


def test_generate_round_trip_matches_the_cli(client, red_png, style_images, tiny_paths, tmp_path):
    params = {
        "prompt": "a lighthouse at dusk",
        "seed": 1234,
        "steps": STEPS,
        "guidance": 4.0,
        "content_prompt": "a red square",
        "content_scale": 0.4,
    }
    r = _post(client, params, _upload(red_png))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["progress"]["step"] == STEPS and len(body["images"]) == 1
    entry = body["images"][0]
    image = _decode(entry)
    assert image.size == (64, 64) and image.format == "PNG"
    embedded = json.loads(image.info[METADATA_KEY])  # the PNG carries its parameters
    for meta in (entry["metadata"], embedded):
        assert {k: meta[k] for k in params} == params
        assert meta["width"] == meta["height"] == 64 and meta["mode"] == "style"
        assert meta["active_blocks"] == ["up_blocks.0.attentions.1"]
    # the image file endpoint serves the same bytes
    png = client.get(entry["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == base64.b64decode(entry["png_base64"])

    # same seed and parameters through the CLI -> the same pixels
    from instantstyle.cli import main

    out = tmp_path / "cli.png"
    argv = [
        "generate",
        "--base",
        str(tiny_paths["base"]),
        "--adapter",
        str(tiny_paths["adapter"]),
        "--image-encoder",
        str(tiny_paths["image_encoder"]),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--style",
        str(style_images["red"]),
        "--prompt",
        params["prompt"],
        "--seed",
        "1234",
        "--steps",
        str(STEPS),
        "--guidance",
        "4.0",
        "--content-prompt",
        "a red square",
        "--content-scale",
        "0.4",
        "--out",
        str(out),
        "--quiet",
        "--no-cache",
    ]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service's worker: CPU float sums depend on the thread count
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    cli = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(cli, np.asarray(image.convert("RGB")))
    # and a different seed gives a different image (the comparison above is not vacuous)
    other = _decode(_post(client, {**params, "seed": 1235}, _upload(red_png)).json()["images"][0])
    assert np.abs(np.asarray(other, dtype=int) - cli.astype(int)).max() > 10


def test_async_job_polling(client, red_png):
    r = _post(
        client, {"prompt": "a cat", "seed": 7, "steps": STEPS, "num_images": 2}, _upload(red_png), wait=False
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["status"] in (
        "queued",
        "running",
        "done",
    )
    deadline = time.monotonic() + 60
    while (body := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "job never finished"
        time.sleep(0.05)
    assert body["status"] == "done" and [i["index"] for i in body["images"]] == [0, 1]
    assert {i["metadata"]["seed"] for i in body["images"]} == {7}
    assert "png_base64" not in client.get(f"/v1/jobs/{job_id}?images=false").json()["images"][0]
    # the last step's latent preview stays available
    assert body["preview_url"] == f"/v1/jobs/{job_id}/preview.png"
    preview = client.get(body["preview_url"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).mode == "RGB"


def test_saved_styles_crud_and_use(client, red_png, style_images):
    blue = style_images["blue"].read_bytes()
    r = client.post(
        "/v1/styles",
        data={"name": "redblue", "weights": "0.7,0.3"},
        files=_upload(red_png) + _upload(blue, "blue.png"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["images"] == 2 and r.json()["weights"] == pytest.approx([0.7, 0.3])
    assert [s["name"] for s in client.get("/v1/styles").json()["styles"]] == ["redblue"]
    again = client.post("/v1/styles", data={"name": "redblue"}, files=_upload(red_png))
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]

    # a saved style alone, and mixed with an upload (weights cover the upload first)
    r = _post(client, {"prompt": "a house", "seed": 3, "steps": STEPS, "style": ["@redblue"]})
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["metadata"]["style"] == ["@redblue"]
    r = _post(
        client,
        {"prompt": "a house", "seed": 3, "steps": STEPS, "style": ["@redblue"], "style_weights": [1.0, 0.5]},
        _upload(red_png),
    )
    assert r.status_code == 200, r.text

    assert client.delete("/v1/styles/redblue").status_code == 204
    assert client.delete("/v1/styles/redblue").status_code == 404
    assert client.get("/v1/styles").json()["styles"] == []
    bad = client.post("/v1/styles", data={"name": "../escape"}, files=_upload(red_png))
    assert bad.status_code == 400 and "not allowed" in bad.json()["error"]["message"]


def test_blocks_health_and_docs(client):
    blocks = client.get("/v1/blocks").json()
    names = [m["module"] for m in blocks["modules"]]
    assert "up_blocks.0.attentions.1" in names and "down_blocks.2.attentions.1" in names
    assert set(blocks["modes"]) == {
        "style",
        "layout",
        "style+layout",
        "full",
        "strong",
        "composition",
        "precise",
    }
    assert blocks["presets"]["precise"][1] == {
        "blocks": "down_blocks.2.attentions.1",
        "branch": "uncond",
        "scale": 1.0,
        "boost": "--layout-boost",
    }
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["limits"]["max_upload_bytes"] == LIMITS.max_upload_bytes
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/generate" in schema["paths"] and "GenerateRequest" in schema["components"]["schemas"]


BIG_NOISE = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)


def _noise_png() -> bytes:  # ~120 kB: over the 64 kB upload limit
    buf = io.BytesIO()
    Image.fromarray(BIG_NOISE).save(buf, format="PNG")
    return buf.getvalue()


BAD = {
    # name: (params, files or None for a valid upload, expected status, words in the message)
    "non-image upload": (
        {"prompt": "x"},
        [("images", ("notes.txt", b"just some text", "text/plain"))],
        400,
        "not an image",
    ),
    "truncated image": ({"prompt": "x"}, "truncated", 400, "truncated or corrupt"),
    "oversized upload": ({"prompt": "x"}, "noise", 413, "over the limit of 65536 bytes"),
    "too many pixels": (
        {"prompt": "x"},
        [("images", ("big.png", png_bytes((120, 120)), "image/png"))],
        400,
        "over the limit of 10000",
    ),
    "unknown block": ({"prompt": "x", "blocks": "up_blocks.0.attentions.7=1"}, None, 400, "unknown block"),
    "negative steps": ({"prompt": "x", "steps": -3}, None, 400, "steps"),
    "missing prompt": ({"seed": 1}, None, 400, "prompt: Field required"),
    "blank prompt": ({"prompt": "   "}, None, 400, "must not be blank"),
    "prompt too long": ({"prompt": "x" * 201}, None, 400, "over the limit of 200"),
    "unknown field": ({"prompt": "x", "stepz": 3}, None, 400, "stepz"),
    "not json": ("{prompt: x}", None, 400, "not valid JSON"),
    "a path as style": ({"prompt": "x", "style": ["/etc/passwd"]}, None, 400, "only name saved styles"),
    "an escaping style name": (
        {"prompt": "x", "style": ["@../../etc/x"]},
        None,
        400,
        "only name saved styles",
    ),
    "unknown saved style": ({"prompt": "x", "style": ["@nope"]}, None, 400, "not found"),
    "no style at all": ({"prompt": "x"}, [], 400, "no style reference"),
    "too many images": ({"prompt": "x", "num_images": 3}, None, 400, "over the limit of 2"),
    "too many steps": ({"prompt": "x", "steps": 11}, None, 400, "over the limit of 10"),
    "size out of range": ({"prompt": "x", "width": 256}, None, 400, "outside the allowed range"),
    "size not a multiple of 8": ({"prompt": "x", "width": 68}, None, 400, "multiple of 8"),
    "too many uploads": ({"prompt": "x"}, "four", 400, "over the limit of 3"),
    "wrong weight count": ({"prompt": "x", "style_weights": [1, 2]}, None, 400, "style_weights"),
    "unknown method": ({"prompt": "x", "method": "nonesuch"}, None, 400, "nonesuch"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_4xx_json_error_and_the_server_stays_healthy(client, red_png, name):
    params, files, status, words = BAD[name]
    if files is None:
        files = _upload(red_png)
    elif files == "truncated":
        files = _upload(red_png[: len(red_png) // 2])
    elif files == "noise":
        files = _upload(_noise_png())
    elif files == "four":
        files = _upload(red_png) * 4
    if isinstance(params, dict):
        params = {"steps": STEPS, **params}
    r = _post(client, params, files or None)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and words in err["message"] and "\n" not in err["message"]
    _healthy(client)


def test_missing_params_field_and_huge_body(client, red_png):
    r = client.post("/v1/generate", files=_upload(red_png))
    assert r.status_code == 422 and "params" in r.json()["error"]["message"]
    too_big = b"0" * (LIMITS.max_body_bytes + 10)  # refused from Content-Length, before parsing
    r = client.post("/v1/generate", content=too_big, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]
    assert client.get("/v1/jobs/doesnotexist").status_code == 404
    _healthy(client)


def test_a_failing_job_fails_alone(client, service, red_png, monkeypatch):
    import torch

    model = service.model
    real = model.run

    def flaky(pipe, prep, **kw):  # fails inside the denoising call, as a real OOM would
        if prep.request.prompt == "boom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        if prep.request.prompt == "crash":
            raise ValueError("something broke")
        return real(pipe, prep, **kw)

    monkeypatch.setattr(model, "run", flaky)
    r = _post(client, {"prompt": "boom", "steps": STEPS}, _upload(red_png))
    assert r.status_code == 503 and r.json()["error"]["code"] == "out_of_memory"
    assert "out of memory on cpu" in r.json()["error"]["message"]
    r = _post(client, {"prompt": "crash", "steps": STEPS}, _upload(red_png))
    assert r.status_code == 500 and "ValueError: something broke" in r.json()["error"]["message"]
    _healthy(client)
    assert _post(client, {"prompt": "fine", "steps": STEPS}, _upload(red_png)).status_code == 200


def test_full_queue_answers_429_with_retry_after(client, service, red_png):
    gate = threading.Event()
    blockers = [service.submit(lambda m, j: gate.wait(30), kind="test")]
    try:
        deadline = time.monotonic() + 30
        while blockers[0].status != "running":  # the worker is busy...
            assert time.monotonic() < deadline
            time.sleep(0.01)
        blockers += [
            service.submit(lambda m, j: gate.wait(30), kind="test") for _ in range(service.queue_size)
        ]
        t0 = time.monotonic()
        r = _post(client, {"prompt": "x", "steps": STEPS}, _upload(red_png))
        assert time.monotonic() - t0 < 5
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["retry_after"] >= 1
    finally:
        gate.set()
    for job in blockers:
        assert job.wait(30)
    _healthy(client)


def test_api_key(service, red_png):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, api_key="s3cret-key", ui=False), base_url="http://127.0.0.1") as c:
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret-key"},
        ):
            r = c.get("/v1/blocks", headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"
        r = _post(c, {"prompt": "x", "steps": STEPS}, _upload(red_png), headers={"X-API-Key": "nope"})
        assert r.status_code == 401
        # the health check answers without the key, with its status only
        assert c.get("/v1/health").json() == {"status": "ok", "api_key_required": True}
        full = c.get("/v1/health", headers={"X-API-Key": "s3cret-key"})
        assert full.status_code == 200 and "limits" in full.json()
        ok = _post(
            c,
            {"prompt": "x", "seed": 1, "steps": STEPS},
            _upload(red_png),
            headers={"Authorization": "Bearer s3cret-key"},
        )
        assert ok.status_code == 200
        for path in ("/docs", "/openapi.json", "/"):  # nothing of ours is open without the key
            assert c.get(path, follow_redirects=False).status_code == 401
        assert c.get("/openapi.json", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_api_key_also_guards_the_ui(service):
    pytest.importorskip("gradio", reason="needs the 'serve' extra (gradio)")
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, api_key="s3cret-key", ui=True), base_url="http://127.0.0.1") as c:
        assert c.get("/ui/config").status_code == 401
        assert c.post("/ui/login", data={"username": "me", "password": "wrong"}).status_code >= 400
        assert c.post("/ui/login", data={"username": "me", "password": "s3cret-key"}).status_code == 200
        assert c.get("/ui/config").status_code == 200


def test_a_prompt_over_77_tokens_comes_back_as_a_job_warning(client, service, red_png):
    long = " ".join(
        ["cat"] * 50
    )  # 199 characters (the test limit is 200), over 75 tokens on the tiny tokenizer
    n = len(service.model.pipe.tokenizer(long, verbose=False).input_ids) - 2
    assert n > 75
    r = _post(client, {"prompt": long, "seed": 1, "steps": STEPS}, _upload(red_png))
    assert r.status_code == 200, r.text
    (warning,) = r.json()["warnings"]  # the library's own message, for this job only
    assert warning.startswith(f"prompt has {n} tokens; the text encoders read the first 75")
    assert (
        _post(client, {"prompt": "a cat", "seed": 1, "steps": STEPS}, _upload(red_png)).json()["warnings"]
        == []
    )
