"""Jobs and the queue: what a job is, and the worker threads that run them one at a time per model.

- ``submit`` never blocks: a full queue raises ``QueueFullError`` with a Retry-After estimate
  (the API answers 429), so a burst of clients cannot make the server hang;
- a job is an id (unguessable), a status (queued -> running -> done | failed | cancelled), step
  progress, its results (PNG bytes with the full parameters) or a one-line error;
- an exception in a job, out-of-memory included, fails that job only; the worker goes on;
- a job can be cancelled (``cancel``): a queued one is dropped at once, a running one stops at its
  next denoising step (the step callback raises ``JobCancelled``); a job past ``--job-timeout``
  stops the same way, and ``begin_shutdown`` cancels what is queued and bounds what runs.

``JobQueue`` knows nothing of models beyond handing one to ``work(model, job)``; the service
(``service.JobQueue``) builds the work.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import GenerateRequest
from ..errors import InstantStyleError
from .limits import Limits

log = logging.getLogger("instantstyle.server")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class QueueFullError(InstantStyleError):
    """The queue is full: try again after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class UnknownJobError(InstantStyleError):
    """No job with this id (never existed, or expired) (HTTP 404)."""


class ShuttingDownError(InstantStyleError):
    """The server is stopping and takes no new work (HTTP 503)."""


class JobCancelled(InstantStyleError):
    """Raised inside a job's step callback to stop it: ``reason`` is cancelled | timeout | shutdown."""

    def __init__(self, message: str, reason: str = "cancelled"):
        super().__init__(message)
        self.reason = reason


class JobFailedError(InstantStyleError):
    """A synchronous call's job failed; ``job`` says why."""

    def __init__(self, job: Job):
        super().__init__(job.error or "job failed")
        self.job = job


@dataclass
class Result:
    """One generated image: PNG bytes (parameters embedded) and the parameters as a dict."""

    index: int
    png: bytes
    params: dict


@dataclass(eq=False)
class Job:
    kind: str  # "generate" | "style" | ...
    work: Callable = field(repr=False)  # work(model, job) -> value
    request: GenerateRequest | None = None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # unguessable: jobs are private
    status: str = QUEUED
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    device: str | None = None
    results: list[Result] = field(default_factory=list)
    value: object = None  # what a non-image job returned
    preview: object = None  # latest step preview (uint8 numpy array [h, w, 3]) of a running generation
    error: str | None = None
    # "bad_request" | "out_of_memory" | "internal" | and for cancelled jobs "cancelled" | "timeout" | "shutdown"
    error_type: str | None = None
    warnings: list[str] = field(default_factory=list)  # what the library warned about (e.g. a cut prompt)
    deadline: float | None = None  # time.monotonic() past which a running job stops (--job-timeout)

    def __post_init__(self) -> None:
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Job], None]] = []
        self._stop: JobCancelled | None = None  # set by cancel(); the next step raises it
        if self.request is not None:
            self.total = self.request.steps

    def on_step(self, step: int, total: int) -> None:
        """The step callback of a running job: progress, then stop here if cancelled or out of time."""
        self.step, self.total = step, total
        self.check_stop()

    def check_stop(self) -> None:
        if self._stop is not None:
            raise self._stop
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobCancelled(
                "the job ran past the server's time limit (--job-timeout); ask for fewer steps, "
                "a smaller size or fewer images",
                "timeout",
            )

    def request_stop(self, message: str, reason: str) -> None:
        if self._stop is None:
            self._stop = JobCancelled(message, reason)

    @property
    def cancel_requested(self) -> bool:
        return self._stop is not None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` when the job finishes (at once if it already has), from the worker thread."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a dead waiter must not kill the worker
                log.exception("job %s: done callback failed", self.id)

    def summary(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": {
                "step": self.step,
                "total": self.total,
                "fraction": round(self.step / self.total, 4) if self.total else 0.0,
            },
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "device": self.device,
            "error": None if self.error is None else {"type": self.error_type, "message": self.error},
            "cancel_requested": self.cancel_requested,
            "warnings": list(self.warnings),
        }


class JobQueue:
    """One bounded FIFO queue shared by one worker thread per model, and finished jobs kept a while.

    One model per device, one worker per model, so a device never runs two denoising loops at once.
    """

    def __init__(
        self,
        models: list,
        *,
        queue_size: int = 8,
        limits: Limits | None = None,
        keep_jobs: int = 128,
        job_ttl_s: float = 3600.0,
        cpu_threads: int | None = None,
        drain_timeout_s: float = 30.0,
    ):
        if not models:
            raise InstantStyleError("the service needs at least one loaded model")
        if queue_size < 1:
            raise InstantStyleError(f"--queue-size is {queue_size}; it must be >= 1")
        self.models = models
        self.limits = limits or Limits()
        self.queue_size = queue_size
        self.keep_jobs = keep_jobs
        self.job_ttl_s = job_ttl_s
        self.cpu_threads = cpu_threads  # torch intra-op threads of each worker (None: torch's default)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._busy = 0
        self._running: set[Job] = set()
        self._avg_s: float | None = None  # moving average of job durations, for Retry-After
        self.drain_timeout_s = drain_timeout_s  # on shutdown, running jobs get this long, then stop
        self.counts = {"accepted": 0, "refused": 0, "done": 0, "failed": 0, "cancelled": 0}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> JobQueue:
        if self._threads:
            return self
        for i, model in enumerate(self.models):
            t = threading.Thread(
                target=self._worker, args=(model,), name=f"instantstyle-worker-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Take no new work, answer every queued job as cancelled, and give running jobs ``grace_s``
        seconds (default ``drain_timeout_s``) before they stop at their next step. Returns at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        message = "the server is shutting down; resubmit later"
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._finish_cancelled(job, JobCancelled(message, "shutdown"))
        grace = self.drain_timeout_s if grace_s is None else grace_s

        def stop_running() -> None:
            with self._lock:
                running = list(self._running)
            for job in running:
                job.request_stop(message + f" (running jobs get {grace:g} s)", "shutdown")

        timer = threading.Timer(max(0.0, grace), stop_running)
        timer.daemon = True
        timer.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, cancel what is queued, give running jobs the drain time, join the workers."""
        grace = self.drain_timeout_s if timeout is None else timeout
        self.begin_shutdown(grace)
        deadline = time.monotonic() + grace + 10.0  # the grace, then one step of the stopped job
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def __enter__(self) -> JobQueue:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ submitting

    def submit(
        self, work: Callable, *, kind: str = "generate", request: GenerateRequest | None = None
    ) -> Job:
        """Queue ``work(model, job)``; never blocks. Raises ``QueueFullError`` when the queue is full."""
        if self._stopping.is_set():
            raise ShuttingDownError("the server is shutting down; try again later")
        job = Job(kind, work, request)
        with self._lock:
            self._evict()
            self._jobs[job.id] = job
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._jobs.pop(job.id, None)
                self.counts["refused"] += 1
            wait = self.retry_after()
            raise QueueFullError(
                f"the queue is full ({self.queue_size} jobs waiting); retry in {wait} s", wait
            ) from None
        with self._lock:
            self.counts["accepted"] += 1
        return job

    def call(self, fn: Callable, *, kind: str, timeout: float | None = None):
        """Run ``fn(model)`` on a worker (in queue order, like any job) and return its value."""
        job = self.submit(lambda model, _job: fn(model), kind=kind)
        timeout = timeout if timeout is not None else self.limits.max_wait_s
        if not job.wait(timeout):
            self.cancel(job, "the caller stopped waiting")
            raise (
                JobFailedError(job)
                if job.done and job.status != DONE
                else InstantStyleError(
                    f"{kind} job {job.id} did not finish within {timeout:g} s; the server is busy, try again later"
                )
            )
        if job.status in (FAILED, CANCELLED):
            raise JobFailedError(job)
        return job.value

    def cancel(
        self, job: Job | str, message: str = "cancelled by the client", reason: str = "cancelled"
    ) -> Job:
        """Cancel a job: a queued one is dropped now (its slot frees); a running one stops at its next
        denoising step. A finished job is left as it is. Returns the job."""
        job = self.get(job) if isinstance(job, str) else job
        with self._queue.mutex:
            try:
                self._queue.queue.remove(job)
                self._queue.not_full.notify()
                dropped = True
            except ValueError:
                dropped = False
        if dropped:
            self._finish_cancelled(job, JobCancelled(message, reason))
        elif not job.done:
            job.request_stop(message, reason)
        return job

    def _finish_cancelled(self, job: Job, exc: JobCancelled) -> None:
        job.status, job.error, job.error_type = CANCELLED, str(exc), exc.reason
        job.finished = time.time()
        with self._lock:
            self.counts["cancelled"] += 1
        job._finish()

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(
                f"no job {job_id!r}: it never existed or finished over "
                f"{int(self.job_ttl_s)} s ago / {self.keep_jobs} jobs ago"
            )
        return job

    def position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` in the queue (0 = next), None when it is not queued."""
        with self._queue.mutex:
            items = list(self._queue.queue)
        return items.index(job) if job in items else None

    def retry_after(self) -> int:
        """Seconds until a queue slot is expected to free: when the soonest running job should end
        (the measured average job time, less what it has run), not the time to drain the queue."""
        avg = self._avg_s if self._avg_s is not None else 5.0
        now = time.time()
        with self._lock:
            started = [j.started for j in self._running if j.started is not None]
        left = min((avg - (now - t) for t in started), default=avg)
        return int(min(3600, max(1, math.ceil(left))))

    # ------------------------------------------------------------ the workers

    def _evict(self) -> None:
        """Forget finished jobs beyond ``keep_jobs`` or older than ``job_ttl_s`` (caller holds the lock)."""
        now = time.time()
        finished = [j for j in self._jobs.values() if j.done]
        excess = len(self._jobs) - self.keep_jobs + 1
        for j in finished:
            if excess > 0 or now - (j.finished or now) > self.job_ttl_s:
                del self._jobs[j.id]
                excess -= 1

    def _worker(self, model) -> None:
        if self.cpu_threads:
            import torch

            torch.set_num_threads(self.cpu_threads)  # per worker thread
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.25)
            except queue.Empty:
                continue
            if job.done:  # cancelled while queued
                continue
            self._execute(job, model)

    def _execute(self, job: Job, model) -> None:
        job.status, job.started, job.device = RUNNING, time.time(), str(getattr(model, "device", "?"))
        job.deadline = time.monotonic() + self.limits.job_timeout_s
        with self._lock:
            self._busy += 1
            self._running.add(job)
        try:
            job.check_stop()  # cancelled between leaving the queue and starting
            value = job.work(model, job)
            if job.kind == "generate":
                job.results = value
            else:
                job.value = value
            job.status = DONE
        except JobCancelled as exc:
            job.status, job.error, job.error_type = CANCELLED, str(exc), exc.reason
        except InstantStyleError as exc:
            job.status, job.error, job.error_type = FAILED, str(exc), "bad_request"
        except Exception as exc:
            job.status = FAILED
            first = first_line(exc)
            if _is_out_of_memory(exc):
                job.error_type = "out_of_memory"
                job.error = (
                    f"out of memory on {job.device} ({type(exc).__name__}: {first}); "
                    "try a smaller size, fewer images or fewer steps"
                )
                _free_device_memory()
            else:
                job.error_type = "internal"
                job.error = f"generation failed: {type(exc).__name__}: {first}"
            log.error("job %s failed: %s", job.id, job.error, exc_info=job.error_type == "internal")
        finally:
            job.finished = time.time()
            with self._lock:
                self._busy -= 1
                self._running.discard(job)
                self.counts[{DONE: "done", CANCELLED: "cancelled"}.get(job.status, "failed")] += 1
                if job.status == DONE:  # the time a job takes: measured on those that ran to the end
                    took = job.finished - job.started
                    self._avg_s = took if self._avg_s is None else 0.8 * self._avg_s + 0.2 * took
            job._finish()


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (diffusers' ImportErrors start with a blank one)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:limit]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
