"""The queue and workers, with a stub model (no torch): bounded queue, failure isolation, shutdown."""

from __future__ import annotations

import threading
import time

import pytest
from server_helpers import png_bytes

from instantstyle.errors import InstantStyleError
from instantstyle.server.checks import parse_request
from instantstyle.server.jobs import DONE, FAILED, JobFailedError, QueueFullError
from instantstyle.server.limits import Limits
from instantstyle.server.service import GenerationService
from instantstyle.server.uploads import UploadTooLargeError, decode_upload


class StubModel:
    device = "stub:0"
    ids = {"base": "stub"}


def _gate_work(gate: threading.Event, value="ok"):
    def work(model, job):
        assert gate.wait(10), "test gate never opened"
        return value

    return work


def test_full_queue_refuses_at_once_with_retry_after():
    gate = threading.Event()
    with GenerationService(StubModel(), queue_size=2) as service:
        running = service.submit(_gate_work(gate), kind="x")
        deadline = time.monotonic() + 5
        while running.status != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = [service.submit(_gate_work(gate), kind="x") for _ in range(2)]
        t0 = time.monotonic()
        with pytest.raises(QueueFullError) as info:
            service.submit(_gate_work(gate), kind="x")
        assert time.monotonic() - t0 < 0.5  # refused at once, never blocks
        assert info.value.retry_after >= 1
        assert "queue is full" in str(info.value)
        assert service.position(queued[0]) == 0 and service.position(queued[1]) == 1
        assert service.health()["jobs"]["refused"] == 1
        gate.set()
        for job in [running, *queued]:
            assert job.wait(5) and job.status == DONE and job.value == "ok"
        assert service.submit(_gate_work(gate), kind="x").wait(5)  # the queue drained: accepted again


def test_an_error_or_oom_fails_only_that_job():
    import torch

    def boom(model, job):
        raise RuntimeError("kaboom\nsecond line")

    def oom(model, job):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def bad(model, job):
        raise InstantStyleError("unknown block 'x'; valid names: ...")

    with GenerationService(StubModel(), queue_size=8) as service:
        jobs = [service.submit(fn, kind="x") for fn in (boom, oom, bad, lambda m, j: 42)]
        for job in jobs:
            assert job.wait(5)
        assert [j.status for j in jobs] == [FAILED, FAILED, FAILED, DONE]
        assert jobs[0].error_type == "internal" and jobs[0].error == "generation failed: RuntimeError: kaboom"
        assert jobs[1].error_type == "out_of_memory" and "out of memory on stub:0" in jobs[1].error
        assert "smaller size" in jobs[1].error
        assert jobs[2].error_type == "bad_request" and jobs[2].error.startswith("unknown block")
        assert jobs[3].value == 42
        health = service.health()
        assert health["status"] == "ok" and health["workers_alive"] == 1
        assert health["jobs"] == {"accepted": 4, "refused": 0, "done": 1, "failed": 3, "cancelled": 0}
        with pytest.raises(JobFailedError, match="kaboom"):
            service.call(lambda m: boom(m, None), kind="x", timeout=5)


def test_one_worker_per_model_runs_jobs_in_parallel():
    barrier = threading.Barrier(2, timeout=5)
    with GenerationService([StubModel(), StubModel()], queue_size=4) as service:
        jobs = [service.submit(lambda m, j: barrier.wait(), kind="x") for _ in range(2)]
        for job in jobs:  # each waits for the other: only two workers at once can finish this
            assert job.wait(10) and job.status == DONE
        assert service.health()["workers"] == 2


def test_close_cancels_queued_jobs_and_refuses_new_ones():
    gate = threading.Event()
    service = GenerationService(StubModel(), queue_size=4).start()
    running = service.submit(_gate_work(gate), kind="x")
    while running.status != "running":
        time.sleep(0.01)
    queued = service.submit(_gate_work(gate), kind="x")
    threading.Timer(0.2, gate.set).start()
    service.close(timeout=5)
    assert running.status == DONE
    assert queued.status == "cancelled" and queued.error_type == "shutdown"  # answered at once, as cancelled
    with pytest.raises(InstantStyleError, match="shutting down"):
        service.submit(_gate_work(gate), kind="x")


def test_finished_jobs_are_forgotten_beyond_keep_jobs():
    with GenerationService(StubModel(), queue_size=4, keep_jobs=3) as service:
        jobs = []
        for _ in range(6):
            jobs.append(service.submit(lambda m, j: 1, kind="x"))
            jobs[-1].wait(5)
        assert service.get(jobs[-1].id) is jobs[-1]
        with pytest.raises(InstantStyleError, match="no job"):
            service.get(jobs[0].id)


def test_limits_and_upload_checks():
    with pytest.raises(InstantStyleError, match="--min-size 512 is above --max-size 256"):
        Limits(min_size=512, max_size=256)
    with pytest.raises(InstantStyleError, match="--max-upload-bytes is 0"):
        Limits(max_upload_bytes=0)
    limits = Limits(max_upload_bytes=2000, max_pixels=64 * 64)
    assert decode_upload(png_bytes(), "ok.png", limits).size == (64, 64)
    with pytest.raises(UploadTooLargeError, match="over the limit of 2000 bytes"):
        decode_upload(b"\x89PNG" + b"0" * 3000, "big.png", limits)
    with pytest.raises(InstantStyleError, match="over the limit of 4096"):
        decode_upload(png_bytes((65, 64)), "wide.png", limits)
    with pytest.raises(InstantStyleError, match="not an image"):
        decode_upload(b"hello", "a.txt", limits)
    with pytest.raises(InstantStyleError, match="is empty"):
        decode_upload(b"", "empty.png", limits)


def test_parse_request_one_line_errors_and_weights_cover_uploads():
    req = parse_request(
        '{"prompt": "a cat", "style": ["@a"], "style_weights": [0.5, 0.25, 1]}', style_images=2
    )
    assert req.style_weights == [0.5, 0.25, 1.0]
    with pytest.raises(InstantStyleError, match="style_weights has 2 values for 3 style references"):
        parse_request({"prompt": "a", "style": ["@a"], "style_weights": [1, 1]}, style_images=2)
    with pytest.raises(InstantStyleError, match="not valid JSON"):
        parse_request("{prompt: 1}")
    with pytest.raises(InstantStyleError, match="must be a JSON object"):
        parse_request("[1, 2]")
    with pytest.raises(InstantStyleError, match="bogus: Extra inputs are not permitted"):
        parse_request({"prompt": "a", "bogus": 1})


def test_latent_preview_stretches_each_channel_to_0_255():
    import torch

    from instantstyle.server.service import latent_preview

    h, w = 4, 5
    ramp = torch.linspace(-3, 7, h * w).reshape(h, w)  # 1st..99th percentile span of the ramp
    latents = torch.stack([ramp, -ramp, torch.zeros(h, w), torch.ones(h, w)])  # [4, h, w]
    out = latent_preview(latents)
    assert out.shape == (h, w, 3) and out.dtype.name == "uint8"
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # channel 0 rises
    assert out[0, 0, 1] == 255 and out[-1, -1, 1] == 0  # channel 1 falls
    assert (out[..., 2] == 0).all()  # a flat channel does not divide by zero
    assert (out[..., 0].astype(int) + out[..., 1].astype(int) == 255).all()
