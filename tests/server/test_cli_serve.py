"""`instantstyle serve`: bad flags fail in one line before any model loads; `--base tiny` serves."""

from __future__ import annotations

import json

import pytest

from instantstyle.cli import main


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--min-size", "512", "--max-size", "256"], "--min-size 512 is above --max-size 256"),
        (["--queue-size", "0"], "--queue-size is 0"),
        (["--max-upload-bytes", "-1"], "--max-upload-bytes is -1"),
        (["--port", "70000"], "--port 70000"),
        (["--cpu-threads", "0"], "--cpu-threads is 0"),
        (["--controlnet", "depth"], "--controlnet 'depth': give NAME=REF"),
        (["--controlnet", "canny=/models/cn"], "--controlnet canny=/models/cn: the name must be"),
        (["--controlnet", "../x=/models/cn"], "--controlnet ../x=/models/cn: the name must be"),
        (["--max-cost", "0"], "--max-cost is 0.0"),
        (["--drain-timeout", "-1"], "--drain-timeout is -1"),
        (["--allowed-origin", "evil.example"], "--allowed-origin 'evil.example': give scheme://host"),
    ],
)
def test_bad_serve_flags_exit_2_in_one_line(flags, words, capsys, monkeypatch):
    import instantstyle.model as pipeline

    def no_loading(*a, **k):
        raise AssertionError("models must not load before the flags are checked")

    monkeypatch.setattr(pipeline.InstantStyle, "from_pretrained", no_loading)
    assert main(["serve", "--base", "tiny", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("instantstyle: error: ") and words in err and err.count("\n") == 1


def test_serve_help_teaches():
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0


def test_serve_base_tiny_binds_localhost_and_serves(red_png, monkeypatch, capsys):
    """The real command, models and app; only uvicorn.run is replaced by an in-process client."""
    import uvicorn
    from fastapi.testclient import TestClient

    seen = {}

    def fake_run(self, sockets=None):
        app, host, port = self.config.app, self.config.host, self.config.port
        seen.update(host=host, port=port)
        with TestClient(app, base_url=f"http://127.0.0.1:{port}") as c:
            health = c.get("/v1/health", headers={"X-API-Key": "k3y"})
            seen["health"] = health.json()
            seen["no_key"] = c.get("/v1/blocks").status_code
            seen["health_no_key"] = c.get("/v1/health").json()
            seen["ui"] = c.get("/ui/", headers={"X-API-Key": "k3y"}).status_code
            r = c.post(
                "/v1/generate?wait=true",
                headers={"Authorization": "Bearer k3y"},
                data={"params": json.dumps({"prompt": "a cat", "seed": 1, "steps": 2})},
                files=[("images", ("red.png", red_png, "image/png"))],
            )
            seen["generate"] = (r.status_code, r.json())
            # the built-in canny (the tiny ControlNet with --base tiny) and an operator-allowed one
            r = c.post(
                "/v1/generate?wait=true",
                headers={"Authorization": "Bearer k3y"},
                data={
                    "params": json.dumps(
                        {"prompt": "a cat", "seed": 1, "steps": 2, "control": ["canny", "tile=edges"]}
                    )
                },
                files=[
                    ("images", ("red.png", red_png, "image/png")),
                    ("content", ("content.png", red_png, "image/png")),
                ],
            )
            seen["controlnet"] = (r.status_code, r.json())
            # SIGTERM: the service stops taking work at once, and the shutdown wait is bounded
            import signal

            self.handle_exit(signal.SIGTERM, None)
            r = c.post(
                "/v1/generate",
                headers={"Authorization": "Bearer k3y"},
                data={"params": json.dumps({"prompt": "a cat", "steps": 2})},
                files=[("images", ("red.png", red_png, "image/png"))],
            )
            seen["after_sigterm"] = (r.status_code, r.json()["error"]["code"])
            seen["graceful"] = self.config.timeout_graceful_shutdown

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setenv("INSTANTSTYLE_API_KEY", "k3y")
    assert (
        main(
            [
                "serve",
                "--base",
                "tiny",
                "--device",
                "cpu",
                "--cpu-threads",
                "1",
                "--no-ui",
                "--controlnet",
                "edges=tiny",
            ]
        )
        == 0
    )
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 7860)  # this machine only, by default
    assert seen["health"]["status"] == "ok" and seen["health"]["models"]["base"] == "tiny"
    assert seen["health"]["api_key_required"] and seen["no_key"] == 401  # the environment's key is enforced
    assert seen["health_no_key"] == {"status": "ok", "api_key_required": True}  # a health check, nothing more
    assert seen["ui"] == 404  # --no-ui
    status, body = seen["generate"]
    assert status == 200 and body["images"][0]["metadata"]["seed"] == 1
    assert seen["health"]["controls"] == ["canny", "tile", "edges"]
    status, body = seen["controlnet"]
    assert status == 200, body
    assert [c["model"] for c in body["images"][0]["metadata"]["controlnets"]] == ["tiny", "edges"]
    assert "serving cpu at http://127.0.0.1:7860" in capsys.readouterr().err
    assert seen["after_sigterm"] == (503, "shutdown") and seen["graceful"] == 35  # --drain-timeout 30, +5


def test_cli_parser_imports_no_web_framework():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, instantstyle.cli as c; c.build_parser(); import instantstyle.server.service; "
        "heavy = [m for m in ('fastapi', 'gradio', 'uvicorn') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's sources, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


def test_serve_passes_speed_and_memory_and_is_long_lived(monkeypatch):
    """--speed/--memory reach the model (they were once silently ignored by serve), and 'auto'
    is resolved for a long-lived process (max on CUDA: compiling pays off over many requests)."""
    import uvicorn

    from instantstyle import model as pipeline

    seen = {}

    class Stop(Exception):
        pass

    def no_loading(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(pipeline.InstantStyle, "from_pretrained", no_loading)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    assert main(["serve", "--base", "tiny", "--device", "cpu", "--speed", "exact", "--memory", "normal"]) != 0
    assert (seen["speed"], seen["memory"], seen["long_lived"]) == ("exact", "normal", True)


@pytest.mark.parametrize(
    ("speed", "extra", "warmed"), [("max", [], True), ("max", ["--no-warmup"], False), ("exact", [], False)]
)
def test_serve_warms_up_when_the_speed_compiles(speed, extra, warmed, monkeypatch):
    import uvicorn

    from instantstyle import model as pipeline

    calls = []
    monkeypatch.setattr(pipeline.InstantStyle, "warmup", lambda self: calls.append(self.speed) or 0.0)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    assert main(["serve", "--base", "tiny", "--device", "cpu", "--speed", speed, *extra]) == 0
    assert bool(calls) == warmed


def test_warmup_really_generates(tiny_model):
    assert tiny_model.warmup(width=64, height=64) > 0
