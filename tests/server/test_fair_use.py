"""A bad or slow request hurts nobody else: cancel (queued and running), disconnected clients,
cost and time limits, bounded shutdown, Retry-After from measured job times, and every failure
after validation a clear 4xx (never a 500) on a connection that survives it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid

import pytest
from server_helpers import live_server, png_bytes

from instantstyle.server.jobs import CANCELLED, DONE
from instantstyle.server.service import GenerationService, Limits

LIMITS = Limits(max_steps=400, max_size=128, max_cost=2.0, max_wait_s=60)


@pytest.fixture(scope="module")
def service(tiny_model):
    with GenerationService(tiny_model, queue_size=4, limits=LIMITS, cpu_threads=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from instantstyle.server import create_app

    with TestClient(create_app(service, ui=False), base_url="http://127.0.0.1") as c:
        yield c


def _post(client, params: dict, wait=False):
    return client.post(
        "/v1/generate" + ("?wait=true" if wait else ""),
        data={"params": json.dumps(params)},
        files=[("images", ("red.png", png_bytes(), "image/png"))],
    )


def _until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_delete_cancels_a_queued_and_a_running_job(client, service):
    long = _post(client, {"prompt": "long", "steps": 300, "seed": 1}).json()
    queued = _post(client, {"prompt": "queued", "steps": 2, "seed": 2}).json()
    job = service.get(long["id"])
    _until(lambda: job.step >= 1)
    # the queued one is dropped at once: its slot frees, it never runs
    r = client.delete(f"/v1/jobs/{queued['id']}")
    assert (
        r.status_code == 200 and r.json()["status"] == CANCELLED and r.json()["error"]["type"] == "cancelled"
    )
    assert service.get(queued["id"]).started is None and service.health()["queued"] == 0
    # the running one stops at its next step
    r = client.delete(f"/v1/jobs/{long['id']}")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    step_at_cancel = job.step
    assert job.wait(5) and job.status == CANCELLED
    assert job.step <= step_at_cancel + 1 < 300
    body = client.get(f"/v1/jobs/{long['id']}").json()
    assert body["status"] == CANCELLED and body["images"] == []
    assert client.delete(f"/v1/jobs/{long['id']}").status_code == 200  # cancelling twice is harmless
    done = _post(client, {"prompt": "after", "steps": 1, "seed": 3}, wait=True).json()
    assert done["status"] == DONE  # the worker went on
    r = client.delete(f"/v1/jobs/{done['id']}")
    assert r.status_code == 409 and "already finished" in r.json()["error"]["message"]
    assert client.delete("/v1/jobs/nope").status_code == 404


def test_a_disconnected_synchronous_client_has_its_job_cancelled(service):
    """And the connection survives 4xx answers (keep-alive: the next request on it is answered)."""
    from instantstyle.server import create_app

    gate = threading.Event()
    with live_server(create_app(service, ui=False)) as url:
        host, port = url.removeprefix("http://").split(":")
        blocker = service.submit(lambda m, j: gate.wait(20), kind="test")
        try:
            _until(lambda: blocker.status == "running")
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
                    + json.dumps({"prompt": "gone", "steps": 2})
                    + f"\r\n--{boundary}\r\nContent-Disposition: "
                    'form-data; name="images"; filename="r.png"\r\nContent-Type: image/png\r\n\r\n'
                ).encode()
                + png_bytes()
                + f"\r\n--{boundary}--\r\n".encode()
            )
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                f"POST /v1/generate?wait=true HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                f"multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            _until(lambda: service.health()["queued"] == 1)
            (job,) = [
                j for j in service._jobs.values() if j.request is not None and j.request.prompt == "gone"
            ]
            sock.close()  # the client goes away while its job waits
            assert job.wait(5) and job.status == CANCELLED and "disconnected" in job.error
            assert service.health()["queued"] == 0
        finally:
            gate.set()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for _ in range(2):
            conn.request("GET", "/v1/jobs/nope")
            r = conn.getresponse()
            assert r.status == 404 and json.loads(r.read())["error"]["code"] == "not_found"
            conn.request(
                "POST",
                "/v1/generate",
                body="params=%7B%22prompt%22%3A%20%22x%22%2C%20%22steps%22%3A%20true%7D",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            r = conn.getresponse()
            assert r.status == 400 and r.getheader("connection") != "close"
            r.read()
        conn.request("GET", "/v1/health")
        assert conn.getresponse().status == 200  # the same connection, after four 4xx


@pytest.mark.parametrize(
    "params, words",
    [
        ('{"prompt": "x", "style_weights": [Infinity]}', "Infinity"),
        ('{"prompt": "x", "scale": NaN}', "NaN"),
        ('{"prompt": "x", "style_weights": [1e999]}', "finite number"),
        ('{"prompt": "x", "steps": true}', "not true/false"),
        ('{"prompt": "x", "params": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than"),
        ('{"prompt": "x", "task": "img2img", "strength": 0.01, "steps": 2}', "leaves no denoising step"),
        ('{"prompt": "x", "steps": 300, "width": 128, "height": 128}', "--max-cost"),
    ],
)
def test_bad_numbers_depth_and_zero_step_requests_are_400_before_queueing(client, service, params, words):
    accepted = service.health()["jobs"]["accepted"]
    files = [("images", ("red.png", png_bytes(), "image/png"))]
    if "img2img" in params:
        files.append(("content", ("c.png", png_bytes(), "image/png")))
    r = client.post("/v1/generate?wait=true", data={"params": params}, files=files)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"] and r.json()["error"]["message"].count("\n") == 0
    assert service.health()["jobs"]["accepted"] == accepted  # nothing was queued


def test_zero_denoising_steps_are_refused_in_the_library(tiny_model):
    from instantstyle.errors import InstantStyleError

    with pytest.raises(InstantStyleError, match="use --steps 100 or more"):
        tiny_model.generate(prompt="x", content="c.png", strength=0.01, steps=2)


def test_every_listed_scheduler_runs(tiny_model):
    from PIL import Image

    from instantstyle.config import SCHEDULERS

    red = Image.new("RGB", (64, 64), (200, 0, 0))
    for name in SCHEDULERS:
        (image,) = tiny_model.generate(prompt="a cat", style_images=[red], steps=2, seed=1, scheduler=name)
        assert image.size == (64, 64), name


def test_a_scheduler_whose_package_is_missing_is_refused_with_the_install_line(monkeypatch):
    import importlib.util

    from instantstyle.config import make_request
    from instantstyle.errors import InstantStyleError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    with pytest.raises(InstantStyleError, match="pip install scipy"):
        make_request(prompt="x", scheduler="lms")


def test_job_errors_keep_the_useful_line():
    from instantstyle.server.jobs import first_line

    assert (
        first_line(ImportError("\nLMSDiscreteScheduler requires the scipy library\n"))
        == "LMSDiscreteScheduler requires the scipy library"
    )


# ---------------------------------------------------------------- the service alone (stub work)


class StubModel:
    device = "stub:0"
    ids = {"base": "stub"}


def _stepping(n: int, dt: float = 0.01):
    def work(model, job):
        for i in range(n):
            time.sleep(dt)
            job.on_step(i + 1, n)
        return "finished"

    return work


def test_job_timeout_stops_a_job_at_its_next_step():
    with GenerationService(StubModel(), limits=Limits(job_timeout_s=0.1)) as service:
        job = service.submit(_stepping(1000))
        assert job.wait(5) and job.status == CANCELLED and job.error_type == "timeout"
        assert "--job-timeout" in job.error and job.step < 100


def test_shutdown_cancels_queued_jobs_and_bounds_running_ones():
    service = GenerationService(StubModel(), queue_size=4, drain_timeout_s=0.2).start()
    running = service.submit(_stepping(10_000))
    queued = service.submit(_stepping(1))
    _until(lambda: running.step >= 1)
    t0 = time.monotonic()
    service.begin_shutdown()
    assert queued.done and queued.status == CANCELLED and queued.error_type == "shutdown"
    assert running.wait(5) and running.status == CANCELLED and running.error_type == "shutdown"
    assert 0.2 <= time.monotonic() - t0 < 2  # the running job got its grace, then stopped
    service.close()


def test_retry_after_is_the_wait_for_one_slot_from_measured_job_times():
    gate = threading.Event()
    with GenerationService(StubModel(), queue_size=2) as service:
        for _ in range(3):  # measure: jobs of about 0.3 s
            assert service.submit(_stepping(3, 0.1)).wait(5)
        assert 0.25 < service.health()["average_job_s"] < 1.0
        service._avg_s = 40.0  # as if jobs took 40 s
        running = service.submit(lambda m, j: gate.wait(10))
        _until(lambda: running.status == "running")
        queued = [service.submit(lambda m, j: None) for _ in range(2)]
        # the queue holds 2 jobs and 1 runs: a slot frees when the running one ends (~40 s),
        # not after the whole queue (~120 s)
        assert 35 <= service.retry_after() <= 40
        gate.set()
        assert all(j.wait(5) for j in queued)
