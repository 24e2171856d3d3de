"""Who can reach what: the web UI's file routes and descriptors, cross-site requests, foreign Host
names, the key on Gradio's own routes, and failed-login limits. Each test is an attack that worked
before the request policy existed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from server_helpers import png_bytes

from instantstyle.server.service import GenerationService, Limits

pytest.importorskip("gradio", reason="needs the 'serve' extra (gradio)")

REPO = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:7860"
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def service(tiny_model):
    with GenerationService(tiny_model, queue_size=4, cpu_threads=1, limits=Limits(max_steps=4)) as svc:
        yield svc


@pytest.fixture(scope="module")
def ui_client(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    app = create_app(service, ui=True)
    with TestClient(app, base_url=BASE) as c:
        c.app_ = app
        yield c


@pytest.fixture(scope="module")
def keyed_client(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, api_key=KEY, ui=True), base_url=BASE) as c:
        yield c


def _fn_index(client, api_name: str) -> int:
    config = client.get("/ui/config", headers={"X-API-Key": KEY}).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def _upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def _copies_of(data: bytes) -> list[Path]:
    folder = _upload_folder()
    if not folder.is_dir():
        return []
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data
    ]


def _hostile_targets(tmp_path) -> dict[str, str]:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for clients " + os.urandom(16).hex().encode())
    link = tmp_path / "link.png"
    link.symlink_to(secret)
    return {
        "/etc/passwd": "/etc/passwd",
        "a file inside the project": str(REPO / "pyproject.toml"),
        "a symlink": str(link),
    }


def test_ui_file_descriptors_naming_server_files_are_refused_and_never_copied(ui_client, tmp_path):
    """The chain of the finding: a descriptor naming a server file, Gradio copying it into its cache,
    the cache path served by /ui/gradio_api/file=. Now: 400 before Gradio sees it, nothing copied,
    and the file routes serve nothing outside the upload folder."""
    fn = _fn_index(ui_client, "save_style")
    for what, target in _hostile_targets(tmp_path).items():
        data = Path(target).read_bytes()
        before = _copies_of(data)
        desc = {"path": target, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
        r = ui_client.post(
            "/ui/gradio_api/queue/join",
            json={
                "data": [[desc], "stolen", ""],
                "fn_index": fn,
                "session_hash": "attacker",
                "trigger_id": None,
            },
        )
        assert r.status_code == 400, (what, r.text)
        assert "not one uploaded to this server" in r.json()["error"]["message"]
        assert target not in r.text and str(_upload_folder()) not in r.text  # no server path echoed
        assert _copies_of(data) == before, f"{what} was copied into Gradio's cache"
        for route in (f"/ui/gradio_api/file={target}", f"/ui/gradio_api/file/{target}"):
            served = ui_client.get(route)
            assert served.status_code == 403 and data not in served.content, (what, route)
    # a URL in a descriptor (the server would fetch it) and Gradio's URL proxy are refused too
    desc = {"path": "http://169.254.169.254/latest/meta-data", "meta": {"_type": "gradio.FileData"}}
    r = ui_client.post(
        "/ui/gradio_api/queue/join",
        json={"data": [[desc], "x", ""], "fn_index": fn, "session_hash": "attacker"},
    )
    assert r.status_code == 400
    assert ui_client.get("/ui/gradio_api/proxy=http://169.254.169.254/").status_code == 403


def test_gradio_itself_checks_paths_once_mounted(ui_client, service):
    """Second layer: Gradio's own check runs only on a 'launched' app, which mount_gradio_app does not
    set; the UI sets it, so Gradio refuses a non-upload path even if the policy let one through."""
    from gradio import processing_utils
    from gradio.context import LocalContext

    from instantstyle.server.ui import _read

    policy = ui_client.app_.state.policy  # the policy knows the upload folder
    assert policy.upload_dirs == [os.path.realpath(_upload_folder())]
    with pytest.raises(Exception, match="not an upload"):  # our own read refuses a path outside it
        _read(["/etc/passwd"], service.limits, "style image")
    mounted = [r.app for r in ui_client.app_.routes if getattr(r, "path", "") == "/ui"][0].get_blocks()
    assert mounted.has_launched and mounted.is_running
    token = LocalContext.blocks.set(mounted)
    try:
        with pytest.raises(Exception, match="not uploaded by a user"):
            processing_utils._check_allowed("/etc/passwd", check_in_upload_folder=True)
    finally:
        LocalContext.blocks.reset(token)


def test_cross_origin_requests_change_nothing(ui_client, service, red_png):
    evil = {"Origin": "http://evil.example"}
    counts = dict(service.health()["jobs"])
    files = [("images", ("red.png", red_png, "image/png"))]
    r = ui_client.post(
        "/v1/generate", headers=evil, data={"params": json.dumps({"prompt": "x", "steps": 1})}, files=files
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    r = ui_client.post("/v1/styles", headers=evil, data={"name": "victim", "overwrite": "true"}, files=files)
    assert r.status_code == 403
    assert ui_client.delete("/v1/styles/victim", headers=evil).status_code == 403
    # a page on another port of localhost is another origin too; and the UI's own routes are covered
    other = {"Origin": "http://127.0.0.1:3000"}
    assert ui_client.post("/ui/gradio_api/queue/join", headers=other, json={}).status_code == 403
    assert (
        ui_client.post(
            "/ui/gradio_api/upload",
            headers={"Sec-Fetch-Site": "cross-site"},
            files=[("files", ("a.png", png_bytes(), "image/png"))],
        ).status_code
        == 403
    )
    assert service.health()["jobs"] == counts  # nothing was queued
    # a preflight from a foreign origin is refused; Gradio's permissive CORS headers are gone
    pre = ui_client.options("/v1/generate", headers={**other, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
    got = ui_client.get("/ui/config", headers={"Origin": "http://localhost:5173"})
    assert "access-control-allow-origin" not in got.headers
    # the server's own pages still work: same origin, and clients that send no Origin (curl)
    same = ui_client.post(
        "/v1/generate?wait=true",
        headers={"Origin": BASE},
        data={"params": json.dumps({"prompt": "x", "steps": 1, "seed": 1})},
        files=files,
    )
    assert same.status_code == 200, same.text


def test_configured_origin_gets_cors_and_others_do_not(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    app = create_app(service, ui=False, allowed_origins=["https://app.example.com"])
    with TestClient(app, base_url=BASE) as c:
        pre = c.options(
            "/v1/styles",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert (
            pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example.com"
        )
        got = c.get("/v1/styles", headers={"Origin": "https://app.example.com"})
        assert got.headers["access-control-allow-origin"] == "https://app.example.com"
        assert c.delete("/v1/styles/none", headers={"Origin": "https://other.example.com"}).status_code == 403


def test_foreign_host_names_are_refused(ui_client, service):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, but the Host header keeps the name."""
    for path in ("/v1/health", "/ui/config", "/v1/styles"):
        r = ui_client.get(path, headers={"Host": "rebind.evil.example"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host" and "--allowed-host" in r.text
    assert ui_client.get("/v1/health", headers={"Host": "localhost:7860"}).status_code == 200
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    proxied = create_app(service, ui=False, allowed_hosts=["studio.example.com"])
    with TestClient(proxied, base_url="https://studio.example.com") as c:
        assert c.get("/v1/health").status_code == 200


def test_with_a_key_gradio_routes_need_it_too(keyed_client):
    for method, path, body in (
        ("post", "/ui/gradio_api/reset", {"event_id": "x"}),
        ("post", "/ui/gradio_api/cancel", {"session_hash": "s", "fn_index": 0, "event_id": "x"}),
        ("get", "/ui/gradio_api/heartbeat/s", None),
        ("get", "/ui/gradio_api/queue/data?session_hash=s", None),
        ("post", "/ui/gradio_api/upload", None),
        ("get", "/ui/gradio_api/info", None),
    ):
        r = getattr(keyed_client, method)(path, **({"json": body} if body else {}))
        assert r.status_code == 401, (path, r.status_code, r.text[:200])
    assert keyed_client.get("/ui/").status_code == 200  # the login page itself
    # logged in (the cookie), the UI works without the key header
    keyed_client.cookies.clear()
    assert keyed_client.post("/ui/login", data={"username": "me", "password": KEY}).status_code == 200
    assert keyed_client.post("/ui/gradio_api/reset", json={"event_id": "x"}).status_code == 200
    keyed_client.cookies.clear()


def test_failed_key_and_login_attempts_are_limited(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, api_key=KEY, ui=True), base_url=BASE) as c:
        statuses = [
            c.post("/ui/login", data={"username": "u", "password": f"guess{i}"}).status_code
            for i in range(12)
        ]
        assert statuses[:10] == [400] * 10 and statuses[10:] == [429, 429]
        r = c.get("/v1/blocks", headers={"X-API-Key": "guess"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/blocks").status_code == 401  # no key at all: plain 401, not counted


def test_cancelling_in_the_ui_stops_the_job(service, red_png):
    """Gradio's cancel (the Stop button; a closed page) reaches the job: it stops at its next step."""
    import httpx
    from server_helpers import live_server

    from instantstyle.server import create_app

    big = GenerationService(service.model, queue_size=2, cpu_threads=1, limits=Limits(max_steps=400))
    with (
        big,
        live_server(create_app(big, ui=True)) as url,
        httpx.Client(base_url=f"{url}/ui", timeout=30) as c,
    ):
        config = c.get("/config").json()
        dep = next(d for d in config["dependencies"] if d.get("api_name") == "generate")
        comps = {comp["id"]: comp for comp in config["components"]}
        (path,) = c.post("/gradio_api/upload", files=[("files", ("red.png", red_png, "image/png"))]).json()
        data = []
        for i in dep["inputs"]:
            props = comps[i].get("props", {})
            value = props.get("value")
            if props.get("elem_id") == "style-files":
                value = [{"path": path, "orig_name": "red.png", "meta": {"_type": "gradio.FileData"}}]
            elif props.get("elem_id") == "prompt":
                value = "stop me"
            elif props.get("elem_id") == "steps":
                value = 400
            elif props.get("elem_id") in ("width", "height"):
                value = 64
            data.append(value)
        session = "ui-cancel"
        r = c.post(
            "/gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": dep["id"],
                "session_hash": session,
                "trigger_id": dep["targets"][0][0],
                "event_data": None,
            },
        )
        assert r.status_code == 200, r.text
        event_id = r.json()["event_id"]
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
            deadline = time.monotonic() + 30
            job = None
            while job is None or job.step < 1:
                assert time.monotonic() < deadline, "the UI job never started"
                job = next(
                    (j for j in big._jobs.values() if j.request and j.request.prompt == "stop me"), None
                )
                time.sleep(0.02)
            r = c.post(
                "/gradio_api/cancel",
                json={"session_hash": session, "fn_index": dep["id"], "event_id": event_id},
            )
            assert r.status_code == 200
            step_at_cancel = job.step
            assert job.wait(5) and job.status == "cancelled", job.status
            assert job.step <= step_at_cancel + 2 < 400 and "web UI" in job.error
            events.close()
