"""Serving: one process, models loaded once, a bounded job queue, an HTTP API and a web UI.

- ``service``: ``GenerationService`` (one worker thread per loaded model/device, bounded FIFO
  queue, jobs with progress and results) and ``Limits`` (what a request may ask for).
- ``http_api``: ``create_app(service, ...)``, the FastAPI app (``/v1/...``, OpenAPI at ``/docs``).
- ``ui``: the Gradio UI, mounted on the same app.

Nothing here is imported by ``import instantstyle``; fastapi/gradio load only with their modules.
"""
