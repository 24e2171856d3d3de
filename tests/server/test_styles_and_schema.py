"""Saved styles under concurrency (atomic create-if-absent, full-name match, consistent listing)
and the OpenAPI schema (the key's security schemes, every error in one declared shape)."""

from __future__ import annotations

import threading

import pytest
from server_helpers import png_bytes

from instantstyle.server.service import GenerationService, Limits


@pytest.fixture(scope="module")
def service(tiny_model):
    with GenerationService(tiny_model, queue_size=12, cpu_threads=1, limits=Limits(max_steps=4)) as svc:
        yield svc


def _client(service, **kw):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    return TestClient(create_app(service, ui=False, **kw), base_url="http://127.0.0.1")


def test_concurrent_creates_of_one_name_give_one_201_and_409s(service, tmp_path):
    service.model.styles.styles_directory = str(tmp_path / "race")
    n = 8
    statuses, barrier = [], threading.Barrier(n)
    with _client(service) as c:

        def create(i):
            barrier.wait()
            r = c.post(
                "/v1/styles",
                data={"name": "race"},
                files=[("images", ("s.png", png_bytes(colour=(i * 30, 0, 0)), "image/png"))],
            )
            statuses.append(r.status_code)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(statuses) == [201] + [409] * (n - 1), statuses
        listed = c.get("/v1/styles").json()["styles"]
        assert [s["name"] for s in listed] == ["race"]


def test_style_names_match_in_full_and_messages_name_no_server_path(service, tmp_path):
    from instantstyle.embeddings import style_path

    service.model.styles.styles_directory = str(tmp_path / "names")
    with pytest.raises(Exception, match="not allowed"):
        style_path("ok\n", tmp_path)
    with _client(service) as c:
        r = c.post(
            "/v1/styles", data={"name": "ok\n"}, files=[("images", ("s.png", png_bytes(), "image/png"))]
        )
        assert r.status_code == 400 and "not allowed" in r.json()["error"]["message"]
        assert not list((tmp_path / "names").glob("*")) if (tmp_path / "names").exists() else True
        r = c.post("/v1/generate", data={"params": '{"prompt": "x", "style": ["@ok\\n"]}'})
        assert r.status_code == 400
        r = c.post("/v1/generate", data={"params": '{"prompt": "x", "style": ["@missing"]}'})
        assert r.status_code == 400 and str(tmp_path) not in r.text and "instantstyle style" not in r.text


def test_listing_while_styles_are_deleted_leaves_them_out(service, tmp_path, monkeypatch):
    from instantstyle import embeddings
    from instantstyle.server.routes.styles import _list_styles

    directory = tmp_path / "listing"
    service.model.styles.styles_directory = str(directory)
    with _client(service) as c:
        for name in ("a", "b"):
            assert (
                c.post(
                    "/v1/styles", data={"name": name}, files=[("images", ("s.png", png_bytes(), "image/png"))]
                ).status_code
                == 201
            )
    real = embeddings.list_styles
    monkeypatch.setattr(embeddings, "list_styles", lambda d=None: [*real(d), "deleted-meanwhile"])
    assert [s["name"] for s in _list_styles(service)] == ["a", "b"]
    (directory / "b.safetensors").write_bytes(b"damaged")
    assert _list_styles(service)[1] == {
        "name": "b",
        "error": "the style file is damaged; save the style again",
    }


def test_openapi_declares_the_key_and_every_error_in_one_shape(service):
    with _client(service, api_key="k") as c:
        schema = c.get("/openapi.json", headers={"X-API-Key": "k"}).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["apiKey"]["name"] == "X-API-Key"
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]
    assert {} in schema["paths"]["/v1/health"]["get"]["security"]  # the health check needs no key
    error_ref = "#/components/schemas/ErrorResponse"
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            for status in ("400", "401", "403", "413", "422", "429"):
                content = op["responses"][status]["content"]["application/json"]["schema"]
                assert content == {"$ref": error_ref}, (method, path, status)
    assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
