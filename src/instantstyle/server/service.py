"""The generation service behind the HTTP API and the web UI: the loaded models and their work.

Models are loaded once (by the caller); ``GenerationService`` is a ``jobs.JobQueue`` over them
(one worker thread per loaded model, one bounded FIFO queue) that adds what needs the model: the
operator's ControlNets registered by name, the request checks (``checks``) with this server's
``Limits``, the generation work with step previews, and the health report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..config import GenerateRequest
from ..prompts import collected_warnings
from .checks import check_controlnet_names, check_inputs, check_request, parse_request
from .jobs import CANCELLED, DONE, FAILED, QUEUED, Job, JobQueue, Result
from .limits import Limits
from .uploads import Uploads, decode_upload, fill_image_fields

# The web UI imports these from here.
__all__ = [
    "GenerationService",
    "Limits",
    "check_controlnet_names",
    "latent_preview",
    "CANCELLED",
    "DONE",
    "FAILED",
    "QUEUED",
    "Uploads",
    "decode_upload",
    "fill_image_fields",
    "parse_request",
]


class GenerationService(JobQueue):
    """Loaded models + one worker thread each + one bounded FIFO queue + finished jobs kept a while."""

    def __init__(
        self,
        models,
        *,
        queue_size: int = 8,
        limits: Limits | None = None,
        keep_jobs: int = 128,
        job_ttl_s: float = 3600.0,
        cpu_threads: int | None = None,
        controlnets: dict | None = None,
        loras: dict | None = None,
        drain_timeout_s: float = 30.0,
    ):
        super().__init__(
            list(models) if isinstance(models, list | tuple) else [models],
            queue_size=queue_size,
            limits=limits,
            keep_jobs=keep_jobs,
            job_ttl_s=job_ttl_s,
            cpu_threads=cpu_threads,
            drain_timeout_s=drain_timeout_s,
        )
        self.controlnets = dict(controlnets or {})  # name a request may use -> model reference
        self._registered: list[tuple[object, str]] = []
        self._register_controlnets()
        self.loras = dict(loras or {})  # LoRA name a request may use -> file (``serve --lora-dir``)
        for model in (
            self.models if self.loras else ()
        ):  # checked against each model now: a bad file fails at start
            model.loras.offer(self.loras)

    @property
    def model(self):
        """The first model (all are the same weights on different devices)."""
        return self.models[0]

    def _register_controlnets(self) -> None:
        """Load each operator-allowed ControlNet once per model (checked against its UNet) under its name."""
        if not self.controlnets:
            return
        from .. import control as control_mod

        check_controlnet_names(self.controlnets)
        for model in self.models:
            for name, ref in self.controlnets.items():
                control_mod.register(model, name, control_mod.load_controlnet(model, ref))
                self._registered.append((model, name))

    def _unregister_controlnets(self) -> None:
        from .. import control as control_mod

        for model, name in self._registered:
            control_mod.unregister(model, name)
        self._registered = []

    def close(self, timeout: float | None = None) -> None:
        """Stop the queue and its workers (``JobQueue.close``), then unregister the ControlNets."""
        super().close(timeout)
        self._unregister_controlnets()
        for model in self.models if self.loras else ():
            for name in self.loras:
                model.loras.named.pop(name, None)

    def check(self, req: GenerateRequest, *, style_images: int = 0) -> None:
        check_request(
            req,
            self.model,
            self.limits,
            style_images=style_images,
            controlnets=list(self.controlnets),
            loras=self.lora_names(),
        )

    def check_inputs(self, req: GenerateRequest, uploads: Uploads) -> None:
        check_inputs(req, self.model, self.limits, uploads)

    def lora_names(self) -> list[str]:
        """The LoRA names a request may use (``loras: ["NAME:0.7"]``)."""
        return sorted(self.loras)

    def control_choices(self) -> list[str]:
        """``control`` values a request may use: the built-in kinds, then the operator's ControlNets."""
        from ..control import KINDS

        return [*KINDS, *self.controlnets]

    def submit_generate(
        self,
        req: GenerateRequest,
        style_images: Sequence = (),
        *,
        previews: bool = True,
        uploads: Uploads | None = None,
    ) -> Job:
        """Queue one generation; ``style_images`` are decoded PIL images (see ``decode_upload``),
        ``uploads`` the content / mask / style-mask / control images the request's ``UPLOAD`` labels mean.

        With ``previews``, each denoising step leaves a cheap preview of the latents in ``job.preview``
        (InstantStyle text-to-image only: the same ``prepare`` + ``run`` as ``generate``, plus diffusers'
        ``callback_on_step_end`` reading the latents; other methods and modes report progress only).
        What the library warns about while it runs (a prompt longer than the text encoders read)
        lands in ``job.warnings``.
        """
        images = list(style_images)
        in_memory = (uploads or Uploads()).kwargs(req)

        def work(model, job: Job) -> list[Result]:
            from ..images import METADATA_KEY, png_bytes

            with collected_warnings() as notes:
                job.warnings = notes  # filled while it runs, e.g. a prompt longer than the encoders read
                out = _generate(model, job, req, images, in_memory, previews=previews)
            return [Result(i, png_bytes(im), json.loads(im.info[METADATA_KEY])) for i, im in enumerate(out)]

        return self.submit(work, kind="generate", request=req)

    def health(self) -> dict:
        alive = sum(t.is_alive() for t in self._threads)
        with self._lock:
            counts = dict(self.counts)
        return {
            "status": "ok" if alive == len(self.models) and not self._stopping.is_set() else "unavailable",
            "workers": len(self.models),
            "workers_alive": alive,
            "busy": self._busy,
            "queued": self._queue.qsize(),
            "queue_size": self.queue_size,
            "devices": [str(getattr(m, "device", "?")) for m in self.models],
            "models": getattr(self.model, "ids", {}),
            "controls": self.control_choices(),
            "loras": self.lora_names(),
            "average_job_s": None if self._avg_s is None else round(self._avg_s, 3),
            "jobs": counts,
        }


def _generate(
    model, job: Job, req: GenerateRequest, images: list, in_memory: dict, *, previews: bool
) -> list:
    """Run one generation on ``model`` with ``job``'s step callback (progress, cancel, timeout)."""
    from ..pipelines import needs_stylize

    if not (previews and req.method == "instantstyle" and not needs_stylize(req)):
        return model.generate(req, style_images=images, on_step=job.on_step, **in_memory)

    def preview(_pipe, _i, _t, tensors):
        if tensors.get("latents") is not None:
            job.preview = latent_preview(tensors["latents"][0])
        return tensors

    with model.loras.scope(req.loras):  # the request's user LoRAs, as generate applies them
        prep = model.prepare(
            req,
            images,
            composition_image=in_memory["composition_image"],
            negative_style_image=in_memory["negative_style_image"],
        )
        return model.run(
            model.pipe,
            prep,
            on_step=job.on_step,
            callback_on_step_end=preview,
            callback_on_step_end_tensor_inputs=["latents"],
        )


def latent_preview(latents):
    """A rough RGB look at latents ``[C, h, w]`` (C >= 3): the first three channels, each stretched
    to 0..255 between its 1st and 99th percentile -> uint8 ``[h, w, 3]``. Shows composition and
    contrast while denoising; its colours are not the decoded image's (no VAE runs)."""
    import torch

    x = latents[:3].detach().float().cpu()  # [3, h, w]
    flat = x.flatten(1)  # [3, h*w]
    lo = torch.quantile(flat, 0.01, dim=1)[:, None, None]  # [3, 1, 1]
    hi = torch.quantile(flat, 0.99, dim=1)[:, None, None]
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)  # [3, h, w] in 0..1
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # [h, w, 3]
