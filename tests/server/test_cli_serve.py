"""`instantstyle serve`: bad flags fail in one line before any model loads; `--base tiny` serves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instantstyle.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize("flags, words", [
    (["--min-size", "512", "--max-size", "256"], "--min-size 512 is above --max-size 256"),
    (["--queue-size", "0"], "--queue-size is 0"),
    (["--max-upload-bytes", "-1"], "--max-upload-bytes is -1"),
    (["--port", "70000"], "--port 70000"),
    (["--cpu-threads", "0"], "--cpu-threads is 0"),
])
def test_bad_serve_flags_exit_2_in_one_line(flags, words, capsys, monkeypatch):
    import instantstyle.pipeline as pipeline

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


def test_serve_base_tiny_answers_over_http(red_png, tmp_path):
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "INSTANTSTYLE_API_KEY": "k3y", "INSTANTSTYLE_STYLES": str(tmp_path / "styles"),
           "INSTANTSTYLE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "instantstyle", "serve", "--base", "tiny", "--port", str(port),
                             "--no-ui", "--cpu-threads", "1", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                r = httpx.get(f"{url}/v1/health", headers={"X-API-Key": "k3y"}, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up within 60 s"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["models"]["base"] == "tiny" and r.json()["api_key_required"]
        assert httpx.get(f"{url}/v1/health", timeout=5).status_code == 401  # the env key is enforced
        r = httpx.post(f"{url}/v1/generate?wait=true", headers={"Authorization": "Bearer k3y"}, timeout=60,
                       data={"params": json.dumps({"prompt": "a cat", "seed": 1, "steps": 2})},
                       files=[("images", ("red.png", red_png, "image/png"))])
        assert r.status_code == 200, r.text
        assert r.json()["images"][0]["metadata"]["seed"] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
