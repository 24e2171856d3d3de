"""The HTTP API with an IP-Adapter Plus: content subtraction is refused before queueing (400, one line)."""

from __future__ import annotations

import json

import pytest
from server_helpers import png_bytes

from instantstyle.server.service import GenerationService, Limits


@pytest.fixture(scope="module")
def client(plus_model):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    limits = Limits(max_steps=4, min_size=64, max_size=128)
    with GenerationService(plus_model, queue_size=2, limits=limits, cpu_threads=1) as service:
        with TestClient(create_app(service, ui=False), base_url="http://127.0.0.1") as c:
            yield c


def test_content_subtraction_with_plus_is_a_400(client, plus_model):
    params = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "content_prompt": "a dog"}
    files = [("images", ("red.png", png_bytes(), "image/png"))]
    r = client.post("/v1/generate?wait=true", data={"params": json.dumps(params)}, files=files)
    assert r.status_code == 400, r.text
    message = json.dumps(r.json())
    assert "does not apply to an IP-Adapter Plus" in message and "--negative-style" in message
    adapter_dir = plus_model.ids["adapter"].rsplit("/", 1)[0]  # a server path: never in an answer
    assert "\\n" not in message and adapter_dir not in message
